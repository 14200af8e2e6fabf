"""npz Dataset folders on real data (digits): round trip, atomic writes, and every kind of damage."""
import textwrap

import numpy as np
import pytest
import yaml
from sklearn.datasets import load_digits

from autocompress.data import FeedSource, load_dataset_yaml, read_dataset, write_dataset, write_source
from autocompress.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images.astype(np.float32)[:, None] / 16.0, d.target.astype(np.int64)[:, None]


@pytest.fixture
def dataset(tmp_path, digits):
    x, y = digits
    return write_dataset(tmp_path / "digits", {"x": x}, y, shard_size=500, preprocessing="images / 16")


def read_all(source):
    batches = list(source.batches())
    return (np.concatenate([b.feed["x"] for b in batches]),
            None if batches[0].label is None else np.concatenate([b.label for b in batches]), batches)


def test_round_trip(dataset, digits):
    x, y = digits
    meta = yaml.safe_load((dataset / "dataset.yaml").read_text())
    assert meta["format"] == "npz" and meta["samples"] == 1797
    assert meta["feeds"] == {"x": {"shape": [1, 8, 8], "dtype": "float32"}}
    assert meta["label_field"] == "label" and meta["label"] == {"shape": [1], "dtype": "int64"}
    assert [s["samples"] for s in meta["shards"]] == [500, 500, 500, 297]
    assert meta["preprocessing"] == "images / 16"
    assert sorted(p.name for p in dataset.iterdir()) == ["dataset.yaml"] + [f"shard-0000{i}.npz" for i in range(4)]
    src = read_dataset(dataset, batch_size=64)
    assert src.num_batches() == 29 and src.feed_names == ["x"] and src.label_field == "label"
    xs, ys, batches = read_all(src)
    assert [b.size for b in batches] == [64] * 28 + [5]
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)
    xs2, _, _ = read_all(src)  # second pass (from the in-memory cache) is identical
    np.testing.assert_array_equal(xs2, x)
    assert len(list(src.batches(limit=2))) == 2


def test_unlabelled_and_replacing_existing(tmp_path, digits):
    x, _ = digits
    folder = write_dataset(tmp_path / "d", {"x": x[:10]})
    folder = write_dataset(tmp_path / "d", {"x": x[:20]}, shard_size=8)
    xs, ys, _ = read_all(read_dataset(folder))
    assert ys is None and len(xs) == 20
    assert load_dataset_yaml(folder)["label_field"] is None


def test_failed_write_leaves_nothing(tmp_path, digits):
    x, y = digits
    with pytest.raises(DataError, match="different numbers of samples"):
        write_dataset(tmp_path / "bad", {"x": x}, y[:5])
    with pytest.raises(DataError, match="label_field 'x' is also a feed"):
        write_dataset(tmp_path / "bad", {"x": x}, y, label_field="x")
    assert not (tmp_path / "bad").exists()
    assert not list(tmp_path.iterdir())  # no temporary folder left behind either


def test_write_source_streams_variable_shapes(tmp_path):
    rng = np.random.default_rng(0)

    def lines():  # OCR-like batches whose width changes between batches
        for width in (32, 32, 48):
            yield {"x": rng.random((4, 3, 8, width), dtype=np.float32)}

    folder = write_source(tmp_path / "ocr", FeedSource.from_any(lines, ["x"]), shard_size=6, label_field=None)
    meta = load_dataset_yaml(folder)
    assert meta["feeds"]["x"]["shape"] == [3, 8, -1]
    assert [s["samples"] for s in meta["shards"]] == [6, 2, 4]
    widths = [b.feed["x"].shape[-1] for b in read_dataset(folder, batch_size=100).batches()]
    assert widths == [32, 48]  # a batch never mixes widths: the reader batches within compatible shards


def test_labels_without_label_field_are_not_dropped(tmp_path, digits):
    x, y = digits
    with pytest.raises(DataError, match="label_field is None"):
        write_source(tmp_path / "d", FeedSource.from_arrays({"x": x[:4]}, y[:4]), label_field=None)


def test_corrupt_shard_names_the_file(dataset):
    shard = dataset / "shard-00001.npz"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DataError, match="shard-00001.npz is corrupt"):
        read_all(read_dataset(dataset))
    # without a recorded hash the npz loader itself notices
    meta = yaml.safe_load((dataset / "dataset.yaml").read_text())
    for s in meta["shards"]:
        s.pop("sha256")
    (dataset / "dataset.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(DataError, match="shard-00001.npz is corrupt or not an .npz"):
        read_all(read_dataset(dataset))


def test_pickled_shard_is_refused(tmp_path, dataset):
    meta = yaml.safe_load((dataset / "dataset.yaml").read_text())
    np.savez(dataset / "shard-00000.npz", x=np.array([object()] * 500, dtype=object),
             label=np.zeros((500, 1), np.int64))
    for s in meta["shards"]:
        s.pop("sha256")
    (dataset / "dataset.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(DataError, match="shard-00000.npz is corrupt or not an .npz"):
        read_all(read_dataset(dataset))


def test_missing_shard_unknown_key_and_escaping_path(dataset):
    (dataset / "shard-00002.npz").unlink()
    with pytest.raises(DataError, match="shard shard-00002.npz is missing"):
        read_dataset(dataset)
    meta = yaml.safe_load((dataset / "dataset.yaml").read_text())
    meta["shards"] = meta["shards"][:2]
    meta["samples"] = 1000
    meta["lable_field"] = "label"
    (dataset / "dataset.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(DataError, match=r"dataset.yaml: unknown keys \['lable_field'\]"):
        read_dataset(dataset)
    del meta["lable_field"]
    meta["shards"][0]["file"] = "../shard-00000.npz"
    (dataset / "dataset.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(DataError, match="points outside the Dataset folder"):
        read_dataset(dataset)


def test_missing_yaml_bad_format_and_sample_count(tmp_path, dataset):
    with pytest.raises(DataError, match="dataset.yaml is missing"):
        read_dataset(tmp_path)
    meta = yaml.safe_load((dataset / "dataset.yaml").read_text())
    (dataset / "dataset.yaml").write_text(yaml.safe_dump({**meta, "format": "tfrecord"}))
    with pytest.raises(DataError, match="format 'tfrecord' is unknown"):
        read_dataset(dataset)
    (dataset / "dataset.yaml").write_text(yaml.safe_dump({**meta, "samples": 5}))
    with pytest.raises(DataError, match="samples=5 but the shards hold 1797"):
        read_dataset(dataset)


def test_reader_plugin(tmp_path, monkeypatch, digits):
    x, y = digits
    np.save(tmp_path / "x.npy", x[:50])
    (tmp_path / "my_reader.py").write_text(textwrap.dedent("""
        import numpy as np
        def read(folder, options):
            x = np.load(folder / "x.npy")
            for i in range(0, len(x), options["batch"]):
                yield {"x": x[i:i + options["batch"]]}
        def broken(folder, options):
            raise KeyError("no such column")
            yield
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(
        {"reader": "my_reader:read", "feeds": ["x"], "options": {"batch": 20}}))
    xs, ys, batches = read_all(read_dataset(tmp_path))
    assert [b.size for b in batches] == [20, 20, 10] and ys is None
    np.testing.assert_array_equal(xs, x[:50])
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({"reader": "my_reader:broken"}))
    with pytest.raises(DataError, match="reader plugin my_reader:broken failed.*KeyError"):
        read_all(read_dataset(tmp_path))
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({"reader": "no_such_module_xyz:read"}))
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'"):
        read_dataset(tmp_path)
