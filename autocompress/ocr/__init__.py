"""PP-OCR helpers for benchmarks and tests: rendering labelled lines and pages, PP-OCRv4 rec
preprocessing, CTC greedy decoding, character accuracy and exact match; det preprocessing, boxes, hmean,
map IoU; cls lines turned by 180 degrees and top-1."""
from .cls import CLS_WIDTH, cls_evaluator, rotated_lines
from .rec import (char_accuracy, ctc_greedy_decode, exact_match, load_dictionary, ocr_evaluator, preprocess,
                  rec_model_dir)
from .det import (box_hmean, boxes_from_map, cls_model_dir, det_evaluator, det_model_dir, fp32_maps, map_iou,
                  map_iou_evaluator, preprocess_pages, render_pages)
from .render import find_font, render_lines

__all__ = ["CLS_WIDTH", "box_hmean", "boxes_from_map", "char_accuracy", "cls_evaluator", "cls_model_dir",
           "ctc_greedy_decode", "det_evaluator", "det_model_dir", "exact_match", "find_font", "fp32_maps", "load_dictionary",
           "map_iou", "map_iou_evaluator", "ocr_evaluator", "preprocess", "preprocess_pages", "rec_model_dir", "render_lines", "render_pages",
           "rotated_lines"]
