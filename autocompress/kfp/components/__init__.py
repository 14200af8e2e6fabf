"""One lightweight KFP component per stage. Each body only turns its artifacts into one call of
`autocompress.kfp.adapters` (the folder adapter of a stage in `autocompress.stages`; auto mode's in
`autocompress.kfp.auto_adapters`) (no algorithm code here), runs on our image (`autocompress.kfp.image`) with
`install_kfp_package=False` (the image has kfp), and runs unchanged under `kfp.local.SubprocessRunner`."""
from .auto_branch import auto_branch
from .auto_export import auto_export
from .auto_plan import auto_plan
from .auto_select import auto_select
from .calibrate import calibrate
from .distill_train import distill_train
from .evaluate import evaluate
from .export import export
from .load_data import load_data
from .load_model import load_model
from .prune import prune
from .ptq_trial import ptq_trial
from .select_best import select_best

ALL = {c.name: c for c in (load_model, load_data, calibrate, ptq_trial, select_best, prune,
                           distill_train, evaluate, export, auto_plan, auto_branch, auto_select, auto_export)}

__all__ = ["ALL", "auto_branch", "auto_export", "auto_plan", "auto_select", "calibrate", "distill_train", "evaluate", "export", "load_data", "load_model", "prune", "ptq_trial", "select_best"]
