"""Load (issue 11 item 5): memory stays flat over a long PTQ search and a long training run.

Each run is a child process on the digits CNN that samples its resident set size (/proc/self/statm)
after every trial / every training "epoch" (EPOCH_STEPS optimizer steps). The test fits a line through
the samples after a warm-up and bounds the slope (growth per trial / epoch) and the peak RSS. The
figures are written to $AUTOCOMPRESS_MEMORY_FIGURES when set (RELIABILITY.md quotes them)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TRIALS = 100
EPOCHS, EPOCH_STEPS = 36, 24    # 24 steps of 32 samples ~ one pass over the 768 training digits
WARMUP = 8                       # samples before the fit: allocator and Paddle caches settle first
# bounds on the fitted slope after the warm-up and on the peak of a process that loads Paddle, the
# model and the data. Measured: ~0.01-0.07 MiB per trial (RSS saw-tooths back down: the allocator
# settling), ~0.15-0.25 MiB per epoch, all native (tracemalloc: +0.05 MiB of Python objects over 22
# epochs), peak ~550 MiB. The bound is on growth, not a proof that nothing is retained: one digits
# trial's model is ~0.1 MiB, under the noise (keeping all 100 alive, tried, stayed within 0.2 MiB/trial).
# On a fresh environment (2026-12-02) the same code measured 0.10-0.19 MiB per trial idle and 0.21
# under load 5 (the commit before this session's changes: 0.19), so the bound has room above that.
MAX_GROWTH_PER_TRIAL_MIB = 0.35
MAX_GROWTH_PER_EPOCH_MIB = 0.5
MAX_PEAK_MIB = 1024
FIGURES: dict = {}

COMMON = """
import json, os, sys
sys.path.insert(0, {tests!r})
import numpy as np
from autocompress.demo.digits import digits_splits
from autocompress.model_io import locate_model
PAGE = os.sysconf("SC_PAGE_SIZE")
samples = []
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20
def peak_mib():
    # VmHWM: this process's own peak since exec. Not ru_maxrss: Linux carries the parent's high-water
    # mark over fork + exec, so a child of a 1.3 GiB pytest reported 1.3 GiB whatever it used.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
def done(extra):
    print("RESULT " + json.dumps(dict(samples=samples, peak_mib=peak_mib(), **extra)))
sp = digits_splits()
files = locate_model({model!r})
"""

PTQ = COMMON + """
from autocompress.quant import search
from autocompress.quant.ptq_search import run_ptq_search
from test_train_support import top1_evaluator
original = search.TrialRunner.run
def run(self, *args, **kwargs):
    out = original(self, *args, **kwargs)
    samples.append(rss_mib())
    return out
search.TrialRunner.run = run
x, y = sp["calib"]
calib = [{{"x": x[i:i + 8]}} for i in range(0, 256, 8)]
hpo = {{"ptq_algo": ["KL", "hist", "mse", "avg", "abs_max"], "hist_percent": [0.99, 0.99999], "batch_size": 8,
       "batch_num": [1, 32], "bias_correct": False, "search_algo": "random", "max_quant_count": {trials}}}
result = run_ptq_search(files, calib, top1_evaluator(*sp["eval"]), {{}}, hpo, {out!r}, progress=False)
done({{"trials": len(result["trials"]), "metric": result["metric"]}})
"""

TRAIN = COMMON + """
from autocompress.train import run_distill
from test_train_support import top1_evaluator, train_source
def after_step(ctx):
    if ctx.step % {epoch_steps} == 0:
        samples.append(rss_mib())
train = {{"train_iter": {steps}, "eval_iter": {epoch_steps}, "logging_iter": {epoch_steps}, "learning_rate": 0.002,
         "optimizer": "Momentum"}}
result = run_distill(files, train_source(sp["train"][0]), top1_evaluator(*sp["eval"]), {{}}, train, {out!r},
                     after_step=after_step)
done({{"steps": result["steps"], "metric": result["metric"]}})
"""


def _measure(script: str, **fields) -> dict:
    code = script.format(tests=str(Path(__file__).parent), **fields)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, GLOG_minloglevel="2", OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _growth(samples: list[float]) -> tuple[float, float]:
    """(slope of a least-squares line in MiB per sample, total rise) after the warm-up."""
    ys = np.asarray(samples[WARMUP:], dtype=float)
    slope = float(np.polyfit(np.arange(len(ys)), ys, 1)[0])
    return slope, float(ys[-1] - ys[0])


def test_rss_does_not_grow_per_ptq_trial(digits_files, tmp_path):
    got = _measure(PTQ, model=str(digits_files.model_dir), trials=TRIALS, out=str(tmp_path / "ptq"))
    samples = got["samples"]
    assert len(samples) >= TRIALS - 5, f"only {len(samples)} trials ran"
    slope, rise = _growth(samples)
    FIGURES["ptq"] = {"trials": len(samples), "rss_mib_first_last": [round(samples[0], 1), round(samples[-1], 1)],
                      "growth_mib_per_trial": round(slope, 4), "rise_after_warmup_mib": round(rise, 1),
                      "peak_mib": round(got["peak_mib"], 1), "bound_mib_per_trial": MAX_GROWTH_PER_TRIAL_MIB}
    assert slope < MAX_GROWTH_PER_TRIAL_MIB, FIGURES["ptq"]
    assert got["peak_mib"] < MAX_PEAK_MIB, FIGURES["ptq"]


def test_rss_does_not_grow_per_training_epoch(digits_files, tmp_path):
    got = _measure(TRAIN, model=str(digits_files.model_dir), steps=EPOCHS * EPOCH_STEPS, epoch_steps=EPOCH_STEPS,
                   out=str(tmp_path / "train"))
    samples = got["samples"]
    assert len(samples) == EPOCHS
    slope, rise = _growth(samples)
    FIGURES["training"] = {"epochs": len(samples), "steps_per_epoch": EPOCH_STEPS,
                           "rss_mib_first_last": [round(samples[0], 1), round(samples[-1], 1)],
                           "growth_mib_per_epoch": round(slope, 4), "rise_after_warmup_mib": round(rise, 1),
                           "peak_mib": round(got["peak_mib"], 1), "bound_mib_per_epoch": MAX_GROWTH_PER_EPOCH_MIB}
    assert slope < MAX_GROWTH_PER_EPOCH_MIB, FIGURES["training"]
    assert got["peak_mib"] < MAX_PEAK_MIB, FIGURES["training"]


def teardown_module(module):
    out = os.environ.get("AUTOCOMPRESS_MEMORY_FIGURES")
    if out and FIGURES:
        Path(out).write_text(json.dumps(FIGURES, indent=2) + "\n")


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])


def test_the_peak_is_the_childs_own_not_its_parents():
    """Regression: the peak came from ru_maxrss, which Linux carries over fork + exec, so under a 1.3 GiB
    pytest process (the whole suite in CI) both tests above failed at "1334 MiB" whatever the child used."""
    ballast = bytearray(1200 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page: the parent's RSS is > 1.2 GiB
    code = COMMON.split("sp = digits_splits()")[0].format(tests=str(Path(__file__).parent)) + "done({})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    del ballast
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = json.loads(proc.stdout.split("RESULT ", 1)[1])["peak_mib"]
    assert peak < 1024, peak  # the child imports numpy and autocompress: a few hundred MiB at most
