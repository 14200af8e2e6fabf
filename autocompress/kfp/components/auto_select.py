from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from ..image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def auto_select(branches: Input[List[Artifact]], plan: Input[Artifact], model: Input[Model], train_data: Input[Dataset],
                eval_data: Input[Dataset], test_data: Input[Dataset], calib_data: Input[Dataset], config: str,
                chosen: Output[Model], summary: Output[Artifact], report_html: Output[HTML],
                report_md: Output[Markdown], metrics: Output[Metrics], metric: str = "top1", max_drop: float = 0.01,
                drop_type: str = "absolute", device: str = "cpu", batch_size: int = 32):
    """Every branch's candidates within the budget ranked together, interleaved with the original, at
    the deployment batch; the fastest is chosen. The report as HTML and Markdown, the headline
    numbers as Metrics."""
    from autocompress.kfp import auto_adapters

    result = auto_adapters.select([b.path for b in branches], plan.path, model.path, train_data.path,
                                  eval_data.path, test_data.path, calib_data.path, config, chosen.path, summary.path,
                                  metric=metric, max_drop=max_drop, drop_type=drop_type, device=device,
                                  batch_size=batch_size)
    auto_adapters.copy_reports(summary.path, report_html.path, report_md.path)
    for key, value in auto_adapters.headline(result).items():
        metrics.log_metric(key, value)
    chosen.metadata.update({"candidate": result.get("chosen") or "", "target_met": bool(result.get("target_met"))})
