"""Render text-line images with known strings (a labelled OCR set, generated, no download).

Font: DejaVuSans (Debian `fonts-dejavu-core`) when present, else PIL's built-in font. Chinese
characters are only drawn with a font that has them (a CJK font such as Noto Sans CJK); DejaVu has
none, so without one the strings use the dictionary's ASCII letters and digits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FONT_CANDIDATES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                   "/usr/share/fonts/dejavu/DejaVuSans.ttf")
CJK_FONT_CANDIDATES = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
                       "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
                       "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf")
AMBIGUOUS = set("Il1|0OoSsXxCcVvWwZz")


def find_font(cjk: bool = False) -> str | None:
    for path in (CJK_FONT_CANDIDATES if cjk else FONT_CANDIDATES):
        if Path(path).is_file():
            return path
    return None


def charset(dictionary: list[str], with_cjk: bool) -> list[str]:
    """The dictionary characters we can draw: ASCII letters/digits, plus CJK ones with a CJK font."""
    # glyphs that DejaVuSans draws (near) identically are left out: the label would be a coin toss
    chars = [c for c in dictionary if len(c) == 1 and c.isascii() and c.isalnum() and c not in AMBIGUOUS]
    if with_cjk:
        chars += [c for c in dictionary if len(c) == 1 and "\u4e00" <= c <= "\u9fff"][:500]
    return chars


def render_lines(n: int, dictionary: list[str], seed: int = 0, min_len: int = 4, max_len: int = 12,
                 height: int = 48) -> tuple[list[np.ndarray], list[str]]:
    """`n` RGB uint8 images (H x W x 3, dark text on light background) and their strings."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    cjk_font = find_font(cjk=True)
    chars = charset(dictionary, with_cjk=cjk_font is not None)
    font_path = cjk_font or find_font()
    images, texts = [], []
    for _ in range(n):
        text = "".join(rng.choice(chars, size=int(rng.integers(min_len, max_len + 1))))
        size = int(rng.integers(int(height * 0.55), int(height * 0.75)))
        font = ImageFont.truetype(font_path, size) if font_path else ImageFont.load_default()
        left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
        pad_x, pad_y = int(rng.integers(4, 16)), int(rng.integers(3, 8))
        w, h = right - left + 2 * pad_x, bottom - top + 2 * pad_y
        bg = int(rng.integers(200, 256))
        fg = int(rng.integers(0, 70))
        img = Image.new("RGB", (w, h), (bg, bg, bg))
        ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, font=font, fill=(fg, fg, fg))
        arr = np.asarray(img, np.float32)
        arr = np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)  # mild sensor noise
        images.append(arr)
        texts.append(text)
    return images, texts
