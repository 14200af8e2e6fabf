"""One pipeline per strategy combination (the spec's six), each in a GPU variant (`<name>`, the
cluster default) and a CPU variant (`<name>_cpu`: no accelerator requests; what local runs use)."""
from . import ptq_hpo as _ptq
from . import training as _training

COMBINATIONS = ("ptq_hpo", "qat_distill", "prune_distill", "sparse_distill", "distill", "multi_teacher_distill")
DATA_PARAMS = {"ptq_hpo": ("calib_data_uri", "eval_data_uri")}  # the others: train_data_uri, eval_data_uri


def build(combination: str, gpu: bool = True):
    """The pipeline function (a kfp GraphComponent) for a combination."""
    if combination not in COMBINATIONS:
        raise KeyError(f"unknown pipeline {combination!r}; available: {list(COMBINATIONS)}")
    if combination == "ptq_hpo":
        return _ptq.build(gpu)
    return _training.build(combination, gpu)


def names() -> list[str]:
    """Every compiled pipeline's name: <combination> (GPU) and <combination>_cpu."""
    return [n for c in COMBINATIONS for n in (c, f"{c}_cpu")]


def by_name(name: str):
    gpu = not name.endswith("_cpu")
    return build(name[:-4] if not gpu else name, gpu)


def data_params(combination: str) -> tuple[str, str]:
    return DATA_PARAMS.get(combination, ("train_data_uri", "eval_data_uri"))
