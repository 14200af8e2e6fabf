"""PP-OCR text-line recognition helpers for benchmarks and tests: rendering labelled lines,
PP-OCRv4 rec preprocessing, CTC greedy decoding and character accuracy."""
from .rec import (char_accuracy, ctc_greedy_decode, load_dictionary, ocr_evaluator, preprocess,
                  rec_model_dir)
from .render import find_font, render_lines

__all__ = ["char_accuracy", "ctc_greedy_decode", "find_font", "load_dictionary", "ocr_evaluator", "preprocess",
           "rec_model_dir", "render_lines"]
