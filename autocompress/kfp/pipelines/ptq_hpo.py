"""PTQ with hyper-parameter search: statistics collected once, the search fanned out over
`trial_shards` parallel parts (each from the shared statistics), the best part kept, evaluated on the
deployment backend, exported."""
from kfp import dsl

from .. import components as c
from .common import (DEFAULT_ENDPOINT, DEFAULT_SECRET, DEFAULT_TOLERATIONS, common, default_config,
                     evaluate_and_export, heavy, light, load_inputs)


def build(strategy, gpu: bool = True):
    @dsl.pipeline(name=f"autocompress-{strategy.name.replace('_', '-')}" + ("" if gpu else "-cpu"),
                  description=strategy.description)
    def ptq_hpo(model_uri: str, calib_data_uri: str, eval_data_uri: str, test_data_uri: str = "",
                config: str = default_config(strategy), metric: str = "top1", max_drop: float = 0.01,
                drop_type: str = "absolute", model_filename: str = "", params_filename: str = "",
                publish_uri: str = "", device: str = "gpu" if gpu else "cpu", gpu_count: int = 1,
                trial_shards: int = 4, batch_size: int = 32, tolerations: list = DEFAULT_TOLERATIONS,
                node_selector: dict = {}, object_store_secret: str = DEFAULT_SECRET,
                s3_endpoint: str = DEFAULT_ENDPOINT, cpu_limit: str = "8", memory_limit: str = "32Gi"):
        place = dict(gpu=gpu, gpu_count=gpu_count, tolerations=tolerations, node_selector=node_selector,
                     cpu_limit=cpu_limit, memory_limit=memory_limit)
        model, calib, evald, testd = load_inputs(
            c, model_uri=model_uri, config=config, model_filename=model_filename, params_filename=params_filename,
            data_uri=calib_data_uri, data_name="calibration", eval_data_uri=eval_data_uri,
            test_data_uri=test_data_uri, batch_size=batch_size,
            secret=object_store_secret, s3_endpoint=s3_endpoint)
        stats = common(heavy(c.calibrate(model=model.outputs["model"], calib_data=calib.outputs["dataset"],
                                         config=config, trial_shards=trial_shards, device=device,
                                         batch_size=batch_size), **place),
                       object_store_secret, "calibrate (once) + plan trials")
        with dsl.ParallelFor(stats.outputs["Output"], name="trials") as trial:
            part = common(heavy(c.ptq_trial(model=model.outputs["model"], stats=stats.outputs["stats"],
                                            calib_data=calib.outputs["dataset"], eval_data=evald.outputs["dataset"],
                                            config=config, trial=trial, metric=metric, max_drop=max_drop,
                                            drop_type=drop_type, device=device, batch_size=batch_size), **place,
                                in_loop=True),
                          object_store_secret, "PTQ trials", cache=True)
        best = common(light(c.select_best(candidates=dsl.Collected(part.outputs["candidate"]))),
                      object_store_secret, "select best")
        evaluate_and_export(c, model=best.outputs["best"], original=model.outputs["model"], evald=evald, testd=testd,
                            config=config, metric=metric, max_drop=max_drop, drop_type=drop_type, device=device,
                            batch_size=batch_size, place=place, secret=object_store_secret, publish_uri=publish_uri,
                            s3_endpoint=s3_endpoint)

    ptq_hpo.__name__ = strategy.name
    return ptq_hpo
