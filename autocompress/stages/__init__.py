"""The stages of every strategy, as typed engine functions (no kfp, no folders of JSON strings).

| stage | module | in | out |
|---|---|---|---|
| calibrate | `ptq` | ModelFiles, FeedSource, Quantization/HPO configs | CalibrationStats (collected once) |
| plan_trials | `ptq` | HPO config, shard count | search parts |
| ptq_search | `ptq` | ModelFiles, stats, Evaluation, one search part | ModelArtifact (best int8 of the part) |
| select_best | `ptq` | ModelArtifacts | ModelArtifact (best part, all trials) |
| prune | `train` | ModelFiles, PruneConfig | ModelArtifact (channels removed / 2:4 masks) |
| distill_train | `train` | Job, student ModelArtifact, original, FeedSource, Evaluation | ModelArtifact (trained) |
| evaluate | `report` | original, ModelArtifact, Evaluation, Job, stage records | summary dict |
| export | `export` | ModelArtifact, summary | deliverable folder (model/, summary.json, report.md) |

`run.run_job` runs a strategy's stages in one process (the Python API, `autocompress run
--in-process`, a PaddleJob); each Kubeflow component (`autocompress.kfp.adapters`) turns its artifact
folders into one call of the same function.
"""
from .artifact import ModelArtifact, StageTimer

__all__ = ["ModelArtifact", "StageTimer"]
