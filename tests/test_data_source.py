"""FeedSource on real data (scikit-learn's handwritten digits): every accepted input form and bad inputs."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from autocompress.data import Batch, FeedSource, write_dataset
from autocompress.errors import DataError


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images.astype(np.float32)[:, None] / 16.0, d.target.astype(np.int64)[:, None]


@pytest.fixture
def dynamic():
    import paddle

    was_static = not paddle.in_dynamic_mode()
    paddle.disable_static()
    yield paddle
    if was_static:
        paddle.enable_static()


def collect(source, limit=None):
    batches = list(source.batches(limit))
    x = np.concatenate([b.feed["x"] for b in batches])
    y = None if batches[0].label is None else np.concatenate([b.label for b in batches])
    return batches, x, y


def test_from_arrays_batches_views_and_reiterates(digits):
    x, y = digits
    x_before = x.copy()
    src = FeedSource.from_arrays({"x": x}, y, batch_size=100)
    assert src.num_batches() == 18 and src.feed_names == ["x"]
    batches, xs, ys = collect(src)
    assert [b.size for b in batches] == [100] * 17 + [97]
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)
    with pytest.raises(ValueError):
        batches[0].feed["x"][0] = 1.0  # read-only: a consumer cannot change the user's arrays
    assert len(list(src.batches())) == 18  # re-iterable
    assert len(list(src.batches(limit=3))) == 3
    np.testing.assert_array_equal(x, x_before)


def test_from_arrays_rejects_mismatched_and_empty(digits):
    x, y = digits
    with pytest.raises(DataError, match="different numbers of samples"):
        FeedSource.from_arrays({"x": x}, y[:10])
    with pytest.raises(DataError, match="no batches"):
        FeedSource.from_arrays({"x": x[:0]})


class DigitsDataset:
    """A small paddle.io.Dataset-like map dataset returning (x, y) or dicts."""

    def __init__(self, x, y, as_dict=False):
        self.x, self.y, self.as_dict = x, y, as_dict

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "label": self.y[i]} if self.as_dict else (self.x[i], self.y[i])


def test_paddle_dataloader_lists_and_dicts(digits):
    import paddle

    x, y = digits
    for as_dict in (False, True):
        ds = type("DS", (DigitsDataset, paddle.io.Dataset), {})(x, y, as_dict)
        loader = paddle.io.DataLoader(ds, batch_size=256, shuffle=False)
        src = FeedSource.from_any(loader, ["x"], label_field="label" if as_dict else None)
        assert src.num_batches() == 8
        batches, xs, ys = collect(src)
        assert all(isinstance(b.feed["x"], np.ndarray) for b in batches)
        np.testing.assert_allclose(xs, x)
        np.testing.assert_array_equal(ys, y)
        assert len(list(src.batches())) == 8


def test_tensor_dataset_loader_in_dynamic_mode(digits, dynamic):
    x, y = digits
    ds = dynamic.io.TensorDataset([dynamic.to_tensor(x[:300]), dynamic.to_tensor(y[:300])])
    loader = dynamic.io.DataLoader(ds, batch_size=64)
    _, xs, ys = collect(FeedSource.from_any(loader, ["x"]))
    np.testing.assert_allclose(xs, x[:300])
    np.testing.assert_array_equal(ys, y[:300])


def test_generator_function_lists_tuples_dicts(digits):
    x, y = digits

    def lists():
        for i in range(0, 200, 50):
            yield [x[i:i + 50], y[i:i + 50]]

    def tuples_no_label():
        for i in range(0, 200, 50):
            yield (x[i:i + 50],)

    def dicts():
        for i in range(0, 200, 50):
            yield {"x": x[i:i + 50], "y": y[i:i + 50]}

    _, xs, ys = collect(FeedSource.from_any(lists, ["x"]))
    np.testing.assert_array_equal(ys, y[:200])
    _, xs, ys = collect(FeedSource.from_any(tuples_no_label, ["x"]))
    assert ys is None and xs.shape == (200, 1, 8, 8)
    # one key besides the feeds is the label; with label_field it is explicit
    _, _, ys = collect(FeedSource.from_any(dicts, ["x"]))
    np.testing.assert_array_equal(ys, y[:200])
    _, _, ys = collect(FeedSource.from_any(dicts, ["x"], label_field="y"))
    np.testing.assert_array_equal(ys, y[:200])
    # a list of batches is re-iterable too
    batches = [(x[:10], y[:10]), (x[10:20], y[10:20])]
    assert len(list(FeedSource.from_any(batches, ["x"]).batches())) == 2


def test_one_shot_generator_object_is_refused(digits):
    x, _ = digits
    gen = (x[i:i + 10] for i in range(0, 30, 10))
    with pytest.raises(DataError, match="generator \\*function\\*"):
        FeedSource.from_any(gen, ["x"])


def test_empty_data_and_wrong_feed_names(digits):
    x, y = digits

    def empty():
        return iter(())

    with pytest.raises(DataError, match="yielded no batches"):
        list(FeedSource.from_any(empty, ["x"]).batches())
    with pytest.raises(DataError, match="yielded no batches"):
        list(FeedSource.from_any([], ["x"]).batches())
    wrong = [{"image": x[:10], "label": y[:10]}]
    with pytest.raises(DataError, match=r"expects the feeds \['x'\]") as err:
        list(FeedSource.from_any(wrong, ["x"], label_field="label").batches())
    assert "missing ['x']" in str(err.value)
    with pytest.raises(DataError, match="has 3 elements but the model has 1 feeds"):
        list(FeedSource.from_any([(x[:2], y[:2], y[:2])], ["x"]).batches())
    with pytest.raises(DataError, match="numeric"):
        list(FeedSource.from_any([{"x": np.array(["a", "b"])}], ["x"]).batches())
    with pytest.raises(DataError, match="from_arrays"):
        FeedSource.from_any(x, ["x"])


def test_shape_check_and_dtype_cast(digits):
    x, y = digits
    x64 = x[:20].astype(np.float64)
    before = x64.copy()
    src = FeedSource.from_any([(x64, y[:20])], ["x"], feed_shapes={"x": [-1, 1, 8, 8]},
                              feed_dtypes={"x": "float32"})
    batch = src.first()
    assert batch.feed["x"].dtype == np.float32
    np.testing.assert_array_equal(x64, before)
    bad = FeedSource.from_any([(x[:20].reshape(20, 64),)], ["x"], feed_shapes={"x": [-1, 1, 8, 8]})
    with pytest.raises(DataError, match=r"shape \[20, 64\] but the model expects \[-1, 1, 8, 8\]"):
        bad.first()


def test_rebatch_keeps_samples_in_order(digits):
    x, y = digits
    src = FeedSource.from_arrays({"x": x[:100]}, y[:100], batch_size=30).rebatch(40)
    batches, xs, ys = collect(src)
    assert [b.size for b in batches] == [40, 40, 20]
    np.testing.assert_array_equal(xs, x[:100])
    np.testing.assert_array_equal(ys, y[:100])


def test_from_any_dataset_folder_path_and_feedsource(tmp_path, digits):
    x, y = digits
    folder = write_dataset(tmp_path / "ds", {"x": x[:100]}, y[:100], shard_size=64)
    src = FeedSource.from_any(str(folder), ["x"])
    _, xs, ys = collect(src)
    np.testing.assert_array_equal(xs, x[:100])
    with pytest.raises(DataError, match=r"provides the feeds \['x'\] but the model expects \['image'\]"):
        FeedSource.from_any(folder, ["image"])
    arrays = FeedSource.from_arrays({"x": x[:10]})
    assert FeedSource.from_any(arrays, ["x"]).first().size == 10
    assert isinstance(next(iter(arrays)), Batch)


def test_limit_closes_the_users_generator(digits):
    x, _ = digits
    state = {"closed": 0}

    def gen():
        try:
            for i in range(0, 100, 10):
                yield [x[i:i + 10]]
        finally:
            state["closed"] += 1

    src = FeedSource.from_any(gen, ["x"])
    assert src.first().size == 10
    assert len(list(src.batches(limit=2))) == 2
    assert state["closed"] == 2
    with pytest.raises(ValueError, match="limit"):
        list(src.batches(limit=0))
