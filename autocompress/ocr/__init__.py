"""PP-OCR helpers for benchmarks and tests: rendering labelled lines and pages, PP-OCRv4 rec
preprocessing, CTC greedy decoding and character accuracy; det preprocessing, boxes, hmean, map IoU."""
from .rec import (char_accuracy, ctc_greedy_decode, load_dictionary, ocr_evaluator, preprocess,
                  rec_model_dir)
from .det import (box_hmean, boxes_from_map, cls_model_dir, det_evaluator, det_model_dir, map_iou, preprocess_pages,
                  render_pages)
from .render import find_font, render_lines

__all__ = ["box_hmean", "boxes_from_map", "char_accuracy", "cls_model_dir", "ctc_greedy_decode", "det_evaluator",
           "det_model_dir", "find_font", "load_dictionary", "map_iou", "ocr_evaluator", "preprocess", "preprocess_pages",
           "rec_model_dir", "render_lines", "render_pages"]
