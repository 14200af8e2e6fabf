"""The bundled demo: a small CNN trained on scikit-learn's real handwritten digits, no download.

`load_digits` ships inside scikit-learn (1,797 8x8 images). Training takes a few seconds on a CPU,
so the model is trained on first use and cached, instead of shipping binary weights in git.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir
from ..model_io import ModelFiles, locate_model
from ..version import __version__

EVAL_SIZE = 500
CALIB_SIZE = 256
WIDE_WIDTH = 32  # the demo's auto-mode model


def digits_splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train / calib / eval splits: x float32 [N,1,8,8] in [0,1], y int64 [N,1]. Eval is a hold-out;
    calib is a slice of train (calibration never sees eval data)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)[:, None]
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    train = (x[EVAL_SIZE:], y[EVAL_SIZE:])
    return {"train": train, "calib": (train[0][:CALIB_SIZE], train[1][:CALIB_SIZE]),
            "eval": (x[:EVAL_SIZE], y[:EVAL_SIZE])}


def _build_net(width: int = 16):
    """Three conv blocks of `width`, 2x and 4x channels. The tests' model has width 16; the demo's
    auto mode uses a wider one (WIDE_WIDTH), big enough for pruning to pay on a laptop CPU."""
    import paddle
    from paddle import nn

    w = width

    class DigitsNet(nn.Layer):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2D(1, w, 3, padding=1), nn.BatchNorm2D(w), nn.ReLU(),
                nn.Conv2D(w, 2 * w, 3, padding=1), nn.BatchNorm2D(2 * w), nn.ReLU(), nn.MaxPool2D(2),
                nn.Conv2D(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2D(4 * w), nn.ReLU(), nn.MaxPool2D(2))
            self.classifier = nn.Linear(4 * w * 2 * 2, 10)

        def forward(self, x):
            return self.classifier(paddle.flatten(self.features(x), 1))

    return DigitsNet()


def train_digits_model(out_dir, seed: int = 0, epochs: int = 12, batch_size: int = 64, width: int = 16) -> ModelFiles:
    """Train the demo CNN in dygraph and export it as a legacy `.pdmodel` inference model."""
    import paddle

    was_static = not paddle.in_dynamic_mode()
    paddle.disable_static()
    try:
        paddle.seed(seed)
        splits = digits_splits(seed)
        x, y = splits["train"]
        net = _build_net(width)
        opt = paddle.optimizer.Adam(learning_rate=0.005, parameters=net.parameters())
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            net.train()
            order = rng.permutation(len(x))
            for start in range(0, len(x), batch_size):
                idx = order[start:start + batch_size]
                loss = paddle.nn.functional.cross_entropy(net(paddle.to_tensor(x[idx])), paddle.to_tensor(y[idx]))
                loss.backward()
                opt.step()
                opt.clear_grad()
        net.eval()
        spec = [paddle.static.InputSpec([None, 1, 8, 8], "float32", "x")]
        with atomic_dir(out_dir) as tmp:
            with paddle.pir_utils.OldIrGuard():
                paddle.jit.save(net, str(Path(tmp) / "inference"), input_spec=spec)
            info = Path(tmp) / "inference.pdiparams.info"
            if info.exists():
                info.unlink()  # training-only metadata; deployments don't need it
    finally:
        if was_static:
            paddle.enable_static()
    return locate_model(out_dir)


def default_cache_dir() -> Path:
    root = os.environ.get("AUTOCOMPRESS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "autocompress")
    return Path(root)


def digits_model(cache_dir=None, seed: int = 0, width: int = 16) -> ModelFiles:
    """The digits CNN, trained once and cached (keyed by version, seed and width)."""
    name = f"digits-cnn-{__version__}-seed{seed}" + ("" if width == 16 else f"-w{width}")
    folder = Path(cache_dir or default_cache_dir()) / name
    if not (folder / "inference.pdmodel").exists():
        train_digits_model(folder, seed=seed, width=width)
    return locate_model(folder)


def digits_pir_model(cache_dir=None, seed: int = 0) -> ModelFiles:
    """The same trained network as `digits_model` (its weights), saved by Paddle 3 in its default PIR
    mode: `paddle.jit.save` writes a native `inference.json` + `inference.pdiparams`. Cached likewise."""
    folder = Path(cache_dir or default_cache_dir()) / f"digits-cnn-pir-{__version__}-seed{seed}"
    if not (folder / "inference.json").exists():
        export_pir_twin(digits_model(cache_dir, seed=seed), folder)
    return locate_model(folder)


def export_pir_twin(legacy: ModelFiles, out_dir) -> ModelFiles:
    """Load the legacy digits model's weights into a fresh DigitsNet and `paddle.jit.save` it with the
    PIR API on, as Paddle 3 exports by default."""
    import paddle

    from ..model_io import load_model
    from ..program.legacy.info import persistable_names
    from ..paddle_env import legacy_ir

    with legacy_ir():
        model = load_model(legacy)
        weights = {n: np.array(model.scope.find_var(n).get_tensor()) for n in persistable_names(model.program)}
    was_static = not paddle.in_dynamic_mode()
    paddle.disable_static()
    try:
        with paddle.utils.unique_name.guard():  # fresh parameter names: conv2d_0.w_0, ...
            net = _build_net()
        state = net.state_dict()
        fresh = _names_by_rank([t.name for t in state.values()])
        saved = _names_by_rank(list(weights))
        if set(fresh) != set(saved):
            from ..errors import ModelError

            raise ModelError(f"{legacy.model_path} is not the digits network: its parameters {sorted(weights)} "
                             f"do not match {sorted(t.name for t in state.values())}")
        rank_of = {name: key for key, name in fresh.items()}
        net.set_state_dict({key: weights[saved[rank_of[t.name]]] for key, t in state.items()})
        net.eval()
        spec = [paddle.static.InputSpec([None, 1, 8, 8], "float32", "x")]
        with atomic_dir(out_dir) as tmp, paddle.pir_utils.DygraphPirGuard():
            paddle.jit.save(net, str(Path(tmp) / "inference"), input_spec=spec)
            info = Path(tmp) / "inference.pdiparams.info"
            if info.exists():
                info.unlink()
    finally:
        if was_static:
            paddle.enable_static()
    return locate_model(out_dir)


def _names_by_rank(names: list[str]) -> dict[tuple, str]:
    """Parameter names keyed by (layer kind, rank of the layer's counter, suffix): `conv2d_3.w_0` in a
    net whose convs are conv2d_3..5 -> ('conv2d', 0, 'w_0'), whatever the counters started at."""
    import re
    from collections import defaultdict

    parsed = {n: re.match(r"^(.*)_(\d+)\.(\w+)$", n) for n in names}
    counters = defaultdict(set)
    for m in parsed.values():
        if m:
            counters[m[1]].add(int(m[2]))
    rank = {kind: {c: i for i, c in enumerate(sorted(cs))} for kind, cs in counters.items()}
    return {(m[1], rank[m[1]][int(m[2])], m[3]) if m else (n,): n for n, m in parsed.items()}


def materialize_builtin(uri: str, cache_dir=None) -> Path:
    """Resolve `builtin://digits[@seed]` (the demo model; another seed = a differently trained twin, e.g.
    a second teacher) and `builtin://digits/<split>` (a Dataset folder) to local folders, so example
    configs run on a fresh clone with no data preparation step."""
    from ..errors import ConfigError

    parts = uri.removeprefix("builtin://").strip("/").split("/")
    name, _, seed = parts[0].partition("@")
    valid = (name == "digits" and (seed == "" or seed.isdigit()) and
             (len(parts) == 1 or (len(parts) == 2 and parts[1] in ("train", "calib", "eval") and not seed)))
    if not valid:
        raise ConfigError(f"unknown builtin location {uri!r}; available: builtin://digits or builtin://digits@<seed> "
                          "(models), builtin://digits/train, builtin://digits/calib, builtin://digits/eval (datasets)")
    if len(parts) == 1:
        return digits_model(cache_dir, seed=int(seed or 0)).model_dir
    from ..data.dataset import write_dataset

    folder = Path(cache_dir or default_cache_dir()) / f"digits-data-{__version__}" / parts[1]
    if not (folder / "dataset.yaml").exists():
        x, y = digits_splits()[parts[1]]
        write_dataset(folder, {"x": x}, labels=y)
    return folder
