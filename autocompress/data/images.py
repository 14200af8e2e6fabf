"""Image-list Datasets: image files + a list file + a declared preprocessing (DESIGN §6).

`dataset.yaml`::

    version: 1
    format: image_list
    list_file: list.txt        # lines: `relative/path.png 3` (label optional when label_field is null)
    feed_name: x
    label_field: label         # or null: unlabeled images
    preprocessing:
      color: RGB               # RGB | BGR | L (grayscale)
      resize: 256              # int: shorter side; [h, w]: exact size; omit: keep
      crop: 224                # centre crop, int or [h, w]; omit: none
      interpolation: bilinear  # nearest | bilinear | bicubic | lanczos
      scale: 1/255             # multiply pixels by this first (number or 'a/b')
      mean: [0.485, 0.456, 0.406]
      std: [0.229, 0.224, 0.225]
      layout: NCHW             # NCHW | NHWC
      dtype: float32

Paths must stay inside the folder: absolute paths, `..` and symlinks out are refused.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import yaml

from ..atomic import write_text_atomic
from ..errors import DataError
from .batch import Batch
from .folder import DATASET_FILE, FORMAT_VERSION, OpenedDataset, check_keys, inside

_KEYS = {"version", "format", "list_file", "feed_name", "label_field", "samples", "preprocessing", "description"}
_PRE_KEYS = {"color", "resize", "crop", "interpolation", "scale", "mean", "std", "layout", "dtype"}
_INTERP = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    color: str = "RGB"
    resize: tuple | int | None = None
    crop: tuple | None = None
    interpolation: str = "bilinear"
    scale: float = 1 / 255
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    layout: str = "NCHW"
    dtype: str = "float32"

    @classmethod
    def parse(cls, spec, where: str) -> Preprocess:
        spec = dict(spec or {})
        unknown = sorted(set(spec) - _PRE_KEYS)
        if unknown:
            raise DataError(f"{where}: unknown preprocessing keys {unknown}; allowed: {sorted(_PRE_KEYS)}")
        out = {}
        color = spec.get("color", "RGB")
        if color not in ("RGB", "BGR", "L"):
            raise DataError(f"{where}: preprocessing.color={color!r}; allowed: RGB, BGR, L (grayscale)")
        out["color"] = color
        if spec.get("resize") is not None:
            out["resize"] = _size(spec["resize"], "resize", where)
        if spec.get("crop") is not None:
            out["crop"] = _size(spec["crop"], "crop", where)
        interp = spec.get("interpolation", "bilinear")
        if interp not in _INTERP:
            raise DataError(f"{where}: preprocessing.interpolation={interp!r}; allowed: {list(_INTERP)}")
        out["interpolation"] = interp
        out["scale"] = _number(spec.get("scale", 1 / 255), "scale", where)
        channels = 1 if color == "L" else 3
        for key, default in (("mean", 0.0), ("std", 1.0)):
            value = spec.get(key, default)
            values = tuple(_number(v, key, where) for v in (value if isinstance(value, list) else [value]))
            if len(values) not in (1, channels):
                raise DataError(f"{where}: preprocessing.{key} has {len(values)} values; color {color} has "
                                f"{channels} channel(s): give 1 or {channels}")
            if key == "std" and any(v == 0 for v in values):
                raise DataError(f"{where}: preprocessing.std must not contain 0")
            out[key] = values
        layout = spec.get("layout", "NCHW")
        if layout not in ("NCHW", "NHWC"):
            raise DataError(f"{where}: preprocessing.layout={layout!r}; allowed: NCHW, NHWC")
        out["layout"] = layout
        dtype = spec.get("dtype", "float32")
        if dtype not in ("float32", "float16", "float64", "uint8"):
            raise DataError(f"{where}: preprocessing.dtype={dtype!r}; allowed: float32, float16, float64, uint8")
        out["dtype"] = dtype
        return cls(**out)

    def __call__(self, image) -> np.ndarray:
        """PIL image -> one sample array ([C,H,W] or [H,W,C])."""
        from PIL import Image

        image = image.convert("L" if self.color == "L" else "RGB")
        resample = getattr(Image.Resampling, self.interpolation.upper())
        if self.resize is not None:
            image = image.resize(_resize_to(image.size, self.resize), resample)
        if self.crop is not None:
            image = _center_crop(image, self.crop)
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if self.color == "BGR":
            arr = arr[:, :, ::-1]
        arr = (arr * self.scale - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            arr = arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr, dtype=self.dtype)


def _size(value, key: str, where: str):
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value if key == "resize" else (value, value)
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return tuple(value)
    raise DataError(f"{where}: preprocessing.{key}={value!r}; give a positive int or [height, width]")


def _number(value, key: str, where: str) -> float:
    if isinstance(value, str) and value.count("/") == 1:  # 'a/b', as PaddleClas configs write scales
        a, b = value.split("/")
        try:
            return float(a) / float(b)
        except (ValueError, ZeroDivisionError):
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise DataError(f"{where}: preprocessing.{key}={value!r} is not a number")


def _resize_to(size_wh, resize):
    w, h = size_wh
    if isinstance(resize, tuple):
        return resize[1], resize[0]  # PIL wants (width, height)
    short = min(w, h)
    return max(1, round(w * resize / short)), max(1, round(h * resize / short))


def _center_crop(image, crop):
    ch, cw = crop
    w, h = image.size
    if ch > h or cw > w:
        raise DataError(f"crop {ch}x{cw} is larger than the image ({h}x{w} after resize); "
                        "add a resize at least as large as the crop")
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def _parse_list(folder: Path, list_path: Path, labelled: bool, yaml_path: Path) -> list[tuple[Path, int | None, int]]:
    if not list_path.is_file():
        raise DataError(f"{yaml_path}: list file {list_path} is missing")
    entries = []
    for lineno, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{list_path}:{lineno}"
        if labelled:
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise DataError(f"{where}: expected 'relative/path label', got {line!r}")
            rel, label_text = parts
            try:
                label = int(label_text)
            except ValueError:
                raise DataError(f"{where}: label {label_text!r} is not an integer") from None
        else:
            rel, label = line, None
        entries.append((inside(folder, rel, list_path), label, lineno))
    if not entries:
        raise DataError(f"{list_path} lists no images; the Dataset yielded no batches")
    return entries


def read_image_list(folder: Path, meta: dict, yaml_path: Path, batch_size: int) -> OpenedDataset:
    """Check an image-list `dataset.yaml` (`meta`, read from `yaml_path`) and its list file; decode lazily."""
    check_keys(meta, _KEYS, {"format", "list_file", "feed_name", "preprocessing"}, yaml_path)
    pre = Preprocess.parse(meta["preprocessing"], str(yaml_path))
    feed_name = meta["feed_name"]
    label_field = meta.get("label_field")
    list_path = inside(folder, meta["list_file"], yaml_path)
    entries = _parse_list(folder, list_path, label_field is not None, yaml_path)
    if meta.get("samples") is not None and meta["samples"] != len(entries):
        raise DataError(f"{yaml_path}: samples={meta['samples']} but {list_path.name} lists {len(entries)} images")

    def factory():
        for start in range(0, len(entries), batch_size):
            chunk = entries[start:start + batch_size]
            arrays = [_decode(path, pre, f"{list_path.name}:{lineno}") for path, _, lineno in chunk]
            shapes = {a.shape for a in arrays}
            if len(shapes) > 1:
                raise DataError(f"images {start}..{start + len(chunk) - 1} of {list_path} have different sizes "
                                f"after preprocessing {sorted(shapes)}; add crop, or resize: [height, width]")
            label = np.asarray([[lab] for _, lab, _ in chunk], np.int64) if label_field else None
            yield Batch({feed_name: np.stack(arrays)}, label)

    return OpenedDataset(factory, [feed_name], label_field, description=f"the image-list Dataset {folder}",
                         num_batches=-(-len(entries) // batch_size))


def _decode(path: Path, pre: Preprocess, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return pre(image)
    except FileNotFoundError:
        raise DataError(f"{where}: image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{where}: cannot decode image {path} ({err})") from None


def write_image_list(folder, entries: Iterable[tuple[str, int | None]], preprocessing: dict,
                     feed_name: str = "x", label_field: str | None = "label", list_file: str = "list.txt") -> Path:
    """Index images already inside `folder`: write the list file and `dataset.yaml` (each atomically).

    `entries` are (path relative to folder, label or None). The preprocessing is validated now,
    so a bad spec fails here rather than in a later pipeline stage.
    """
    folder = Path(folder)
    yaml_path = folder / DATASET_FILE
    Preprocess.parse(preprocessing, "preprocessing")
    lines = []
    for rel, label in entries:
        target = inside(folder, rel, yaml_path)
        if not target.is_file():
            raise DataError(f"image {rel} is not a file inside {folder}")
        if any(c.isspace() for c in rel) and label_field is None:
            raise DataError(f"image path {rel!r} contains whitespace; rename it")
        if (label is None) != (label_field is None):
            raise DataError(f"image {rel}: give a label for every image when label_field is set, and none otherwise")
        lines.append(rel if label is None else f"{rel} {int(label)}")
    if not lines:
        raise DataError("no images given; the Dataset would yield no batches")
    meta = {"version": FORMAT_VERSION, "format": "image_list", "list_file": list_file, "feed_name": feed_name,
            "label_field": label_field, "samples": len(lines), "preprocessing": dict(preprocessing)}
    write_text_atomic(folder / list_file, "\n".join(lines) + "\n")
    write_text_atomic(yaml_path, yaml.safe_dump(meta, sort_keys=False))
    return folder
