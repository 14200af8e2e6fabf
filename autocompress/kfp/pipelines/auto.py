"""Auto mode as a pipeline: load model + data -> plan -> one parallel branch per candidate family ->
select -> export.

`auto_plan` groups the planned candidates into families (a chain such as pruning -> int8 runs in
the branch of its parent) and the pipeline fans them out with `dsl.ParallelFor`; each `auto_branch`
runs and measures its family on the deployment target; `auto_select` takes the branches' artifacts
through `dsl.Collected`, measures every finished candidate once more, together and interleaved with
the original (the branches ran side by side, so their own latencies saw each other's load), chooses
the fastest within the budget, and writes the report as `HTML` and `Markdown` artifacts and the
headline numbers as `Metrics`; `auto_export` delivers (and publishes) it.

ParallelFor over a component's output list and Collected artifacts run the same under
`kfp.local.SubprocessRunner` (kfp 2.17's local orchestrator runs the iterations on a thread pool of
at most 2 and hands the collected artifacts to the consumer as a list) and on a cluster, where every
branch is its own pod (one GPU each on the GPU variant). The local runner takes a loop's items only
from a component's single return value (`Output`; a NamedTuple field is not found), so `auto_plan`
returns the families and writes the rest of the plan into its `plan` artifact. The time budget
bounds the whole search: the plan records its start (wall clock) and every later stage counts from
it, so a branch that starts late (queued behind others) runs only while time is left. Branches
train, so they are not cached; a retried branch reuses the candidates its failed attempt finished where the attempt's folder
survives (locally: next to the output artifact; a cluster pod starts afresh and reruns its family).
"""
from kfp import dsl

from .. import components as c
from ..auto_adapters import DEFAULT_CONFIG
from .common import DEFAULT_ENDPOINT, DEFAULT_SECRET, DEFAULT_TOLERATIONS, common, heavy, light, load_inputs

NAME = "auto"
DESCRIPTION = ("Auto mode: the fastest model within the accuracy budget on the deployment target, searched across "
               "strategies (PTQ search, channel pruning + distillation, chains, QAT) in parallel branches, with an "
               "HTML / Markdown report and the headline Metrics")
BRANCH_RETRIES = 1


def pipeline_name(gpu: bool) -> str:
    return NAME if gpu else f"{NAME}_cpu"


def build(gpu: bool = True):
    import json

    @dsl.pipeline(name="autocompress-auto" + ("" if gpu else "-cpu"), description=DESCRIPTION)
    def auto(model_uri: str, train_data_uri: str, eval_data_uri: str, test_data_uri: str = "",
             calib_data_uri: str = "", config: str = json.dumps(DEFAULT_CONFIG), metric: str = "top1",
             max_drop: float = 0.01, drop_type: str = "absolute", model_filename: str = "", params_filename: str = "",
             publish_uri: str = "", device: str = "gpu" if gpu else "cpu", gpu_count: int = 1, batch_size: int = 32,
             tolerations: list = DEFAULT_TOLERATIONS, node_selector: dict = {},
             object_store_secret: str = DEFAULT_SECRET, s3_endpoint: str = DEFAULT_ENDPOINT, cpu_limit: str = "8",
             memory_limit: str = "32Gi"):
        place = dict(gpu=gpu, gpu_count=gpu_count, tolerations=tolerations, node_selector=node_selector,
                     cpu_limit=cpu_limit, memory_limit=memory_limit)
        model, train, evald, testd = load_inputs(
            c, model_uri=model_uri, config=config, model_filename=model_filename, params_filename=params_filename,
            data_uri=train_data_uri, data_name="train", eval_data_uri=eval_data_uri, test_data_uri=test_data_uri,
            batch_size=batch_size, secret=object_store_secret, s3_endpoint=s3_endpoint)
        calib = common(light(c.load_data(data_uri=calib_data_uri, batch_size=batch_size, s3_endpoint=s3_endpoint)),
                       object_store_secret, "load calibration data", cache=False, retries=2)
        data = dict(model=model.outputs["model"], train_data=train.outputs["dataset"],
                    eval_data=evald.outputs["dataset"], test_data=testd.outputs["dataset"],
                    calib_data=calib.outputs["dataset"], config=config, metric=metric, max_drop=max_drop,
                    drop_type=drop_type, device=device, batch_size=batch_size)
        plan = common(light(c.auto_plan(config=config)), object_store_secret, "plan candidates", cache=False)
        with dsl.ParallelFor(plan.outputs["Output"], name="branches") as family:
            branch = common(heavy(c.auto_branch(family=family, plan=plan.outputs["plan"], **data),
                                  **place, in_loop=True),
                            object_store_secret, "candidates (branch)", cache=False, retries=BRANCH_RETRIES)
        select = common(heavy(c.auto_select(branches=dsl.Collected(branch.outputs["candidates"]),
                                            plan=plan.outputs["plan"], **data), **place),
                        object_store_secret, "rank + choose + report", cache=False)
        common(light(c.auto_export(chosen=select.outputs["chosen"], summary=select.outputs["summary"],
                                   publish_uri=publish_uri, s3_endpoint=s3_endpoint)),
               object_store_secret, "export", cache=False, retries=2)

    auto.__name__ = NAME
    return auto
