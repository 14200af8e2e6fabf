"""Under paddle.distributed.launch every rank runs the same job on one save dir: only rank 0 may
write the deliverable (model, summary, report); the others keep theirs private."""
import json

from autocompress import AutoCompression
from autocompress.data import FeedSource


def _run(digits_copy, digits_data, save_dir):
    xt, yt = digits_data["calib"]
    xe, ye = digits_data["eval"]
    return AutoCompression(
        str(digits_copy.model_dir), None, None, str(save_dir), {"DistillationConfig": {}},
        {"train_iter": 2, "eval_iter": 2, "optimizer": "Adam", "learning_rate": 0.0001},
        FeedSource.from_arrays({"x": xt}, yt, batch_size=32), FeedSource.from_arrays({"x": xe}, ye, batch_size=250),
        devices="cpu", progress=False).compression()


def test_only_rank_zero_writes_the_deliverable(digits_copy, digits_data, tmp_path, monkeypatch):
    save = tmp_path / "shared"
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    other = _run(digits_copy, digits_data, save)
    assert other["rank"] == 1 and "metric" not in other
    assert not (save / "model").exists() and not (save / "summary.json").exists()
    assert (save / ".rank1" / "model" / "inference.pdmodel").exists()
    monkeypatch.setenv("PADDLE_TRAINER_ID", "0")
    main = _run(digits_copy, digits_data, save)
    assert (save / "model" / "inference.pdmodel").exists()
    assert json.loads((save / "summary.json").read_text())["strategy"] == "distill" == main["strategy"]
