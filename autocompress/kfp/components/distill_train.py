from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from ..image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def distill_train(student: Input[Model], teacher: Input[Model], train_data: Input[Dataset],
                  eval_data: Input[Dataset], config: str, trained: Output[Model], metrics: Output[Metrics],
                  metric: str = "top1", max_drop: float = 0.01, drop_type: str = "absolute",
                  device: str = "cpu", batch_size: int = 32, s3_endpoint: str = ""):
    """Train the student (QAT / sparse / pruned / plain / multi-teacher distillation). Checkpoints
    go next to the output artifact (`<uri>.checkpoints`), the same place on every retry, so a retried
    task resumes."""
    from autocompress.kfp import adapters

    adapters.use_endpoint(s3_endpoint)
    result = adapters.distill_train(student.path, teacher.path, train_data.path, eval_data.path, config,
                                  trained.path, checkpoint_uri=adapters.checkpoint_location(trained.uri, trained.path),
                                  metric=metric, max_drop=max_drop, drop_type=drop_type, device=device,
                                  batch_size=batch_size)
    if result.get("metric") is not None:
        metrics.log_metric("metric", result["metric"])
    trained.metadata.update({k: v for k, v in result.items() if v is not None})
