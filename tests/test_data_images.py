"""Image-list Datasets: digits written as real PNG files with Pillow, decoded with the declared preprocessing."""
import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from autocompress.data import FeedSource, read_dataset, write_image_list
from autocompress.errors import DataError


@pytest.fixture(scope="module")
def digit_pixels():
    d = load_digits()
    return (d.images[:25] * 255 / 16).round().astype(np.uint8), d.target[:25]


@pytest.fixture
def png_folder(tmp_path, digit_pixels):
    pixels, labels = digit_pixels
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    entries = []
    for i, (img, label) in enumerate(zip(pixels, labels)):
        rel = f"imgs/{'sub/' if i % 2 else ''}{i:03d}.png"
        Image.fromarray(img, mode="L").save(tmp_path / rel)
        entries.append((rel, int(label)))
    return tmp_path, entries


def test_grayscale_round_trip_exact_pixels(png_folder, digit_pixels):
    folder, entries = png_folder
    pixels, labels = digit_pixels
    write_image_list(folder, entries, {"color": "L", "scale": "1/255", "layout": "NCHW"})
    meta = yaml.safe_load((folder / "dataset.yaml").read_text())
    assert meta["format"] == "image_list" and meta["samples"] == 25
    assert (folder / "list.txt").read_text().splitlines()[1] == f"imgs/sub/001.png {labels[1]}"
    src = read_dataset(folder, batch_size=10)
    assert src.num_batches() == 3 and src.feed_names == ["x"]
    batches = list(src.batches())
    assert [b.size for b in batches] == [10, 10, 5]
    x = np.concatenate([b.feed["x"] for b in batches])
    assert x.shape == (25, 1, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0], pixels / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b.label for b in batches])[:, 0], labels)
    assert FeedSource.from_any(folder, ["x"], batch_size=10).first().size == 10
    assert FeedSource.from_any(folder, ["x"]).first().size == 25  # default batch size 32


def test_rgb_resize_crop_normalize_nhwc_bgr(tmp_path):
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[..., 0] = np.arange(16)[None, :] * 10          # red ramps along width
    rgb[..., 1] = np.arange(12)[:, None] * 20          # green ramps along height
    rgb[..., 2] = 200
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "a.png")
    Image.fromarray(rgb[:10, :10], mode="RGB").save(tmp_path / "b.png")
    pre = {"resize": [12, 16], "crop": [4, 6], "scale": 1.0, "mean": [10, 20, 30], "std": [2, 4, 5],
           "layout": "NHWC", "color": "RGB"}
    write_image_list(tmp_path, [("a.png", None)], pre, feed_name="image", label_field=None)
    batch = read_dataset(tmp_path).first()
    assert batch.label is None
    got = batch.feed["image"][0]
    want = (rgb[4:8, 5:11].astype(np.float32) - [10, 20, 30]) / [2, 4, 5]  # centre crop of 12x16
    np.testing.assert_allclose(got, want, rtol=1e-6)
    write_image_list(tmp_path, [("a.png", None)], {**pre, "color": "BGR"}, feed_name="image", label_field=None)
    np.testing.assert_allclose(read_dataset(tmp_path).first().feed["image"][0],
                               (rgb[4:8, 5:11, ::-1].astype(np.float32) - [10, 20, 30]) / [2, 4, 5], rtol=1e-6)
    # shorter side to 6 keeps the aspect ratio; NCHW by default
    write_image_list(tmp_path, [("a.png", None)], {"resize": 6}, label_field=None)
    assert read_dataset(tmp_path).first().feed["x"].shape == (1, 3, 6, 8)
    # different sizes without a crop cannot form one batch: a clear error
    write_image_list(tmp_path, [("a.png", None), ("b.png", None)], {}, label_field=None)
    with pytest.raises(DataError, match="different sizes after preprocessing.*add crop"):
        read_dataset(tmp_path).first()


def test_paths_escaping_the_folder_are_refused(png_folder, tmp_path_factory):
    folder, entries = png_folder
    outside = tmp_path_factory.mktemp("outside") / "evil.png"
    Image.new("L", (8, 8)).save(outside)
    write_image_list(folder, entries, {"color": "L"})
    for bad in ("../evil.png", str(outside)):
        (folder / "list.txt").write_text(f"imgs/000.png 0\n{bad} 1\n")
        with pytest.raises(DataError, match="outside the Dataset folder|relative to the Dataset folder"):
            read_dataset(folder)
    (folder / "imgs" / "link.png").symlink_to(outside)
    (folder / "list.txt").write_text("imgs/link.png 1\n")
    with pytest.raises(DataError, match="points outside the Dataset folder"):
        read_dataset(folder)
    with pytest.raises(DataError, match="outside"):
        write_image_list(folder, [("../evil.png", 1)], {"color": "L"})


def test_bad_preprocessing_list_and_images(png_folder):
    folder, entries = png_folder
    with pytest.raises(DataError, match=r"unknown preprocessing keys \['normalise'\]"):
        write_image_list(folder, entries, {"normalise": True})
    with pytest.raises(DataError, match="layout='CHW'"):
        write_image_list(folder, entries, {"layout": "CHW"})
    with pytest.raises(DataError, match="mean has 2 values"):
        write_image_list(folder, entries, {"mean": [0.5, 0.5]})
    write_image_list(folder, entries, {"color": "L", "crop": 20})
    with pytest.raises(DataError, match="crop 20x20 is larger than the image"):
        read_dataset(folder).first()
    write_image_list(folder, entries, {"color": "L"})
    (folder / "list.txt").write_text("imgs/000.png 0\nimgs/missing.png 1\n")
    meta = yaml.safe_load((folder / "dataset.yaml").read_text())
    (folder / "dataset.yaml").write_text(yaml.safe_dump({**meta, "samples": 2}))
    with pytest.raises(DataError, match=r"list.txt:2: image .*missing.png does not exist"):
        list(read_dataset(folder).batches())
    (folder / "imgs" / "000.png").write_bytes(b"not a png")
    (folder / "list.txt").write_text("imgs/000.png zero\n")
    with pytest.raises(DataError, match="list.txt:1: label 'zero' is not an integer"):
        read_dataset(folder)
    (folder / "list.txt").write_text("imgs/000.png 0\n")
    (folder / "dataset.yaml").write_text(yaml.safe_dump({**meta, "samples": 1}))
    with pytest.raises(DataError, match="cannot decode image"):
        read_dataset(folder).first()
    (folder / "dataset.yaml").write_text(yaml.safe_dump({**meta, "colour": "L"}))
    with pytest.raises(DataError, match=r"unknown keys \['colour'\]"):
        read_dataset(folder)
