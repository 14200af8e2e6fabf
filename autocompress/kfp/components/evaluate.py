from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from ..image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def evaluate(model: Input[Model], baseline: Input[Model], eval_data: Input[Dataset], test_data: Input[Dataset],
             config: str, metrics: Output[Metrics],
             confusion: Output[ClassificationMetrics], summary: Output[Artifact], metric: str = "top1",
             max_drop: float = 0.01, drop_type: str = "absolute", device: str = "cpu", batch_size: int = 32):
    """Measure the compressed model next to the original on the deployment backend (metric, drop,
    size, latency, params, FLOPs) — on the test split when the run has one, so the reported metric
    comes from data the selection never saw — and write summary.json + report.md."""
    from autocompress.kfp import adapters

    result = adapters.evaluate(model.path, baseline.path, eval_data.path, config, summary.path,
                               test_dir=test_data.path, metric=metric, max_drop=max_drop, drop_type=drop_type,
                               device=device, batch_size=batch_size)
    for key, value in adapters.metric_items(result):
        metrics.log_metric(key, value)
    if result.get("confusion_matrix"):
        cm = result["confusion_matrix"]
        confusion.log_confusion_matrix(cm["categories"], cm["matrix"])
    summary.metadata.update({"target_met": result["target_met"], "metric": result["metric"]})
