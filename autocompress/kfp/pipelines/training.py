"""Every training strategy has one shape:
load model + data -> [prune, when the strategy's stages include it] -> distill_train (retried, resumes
from checkpoints) -> evaluate -> export. The teacher defaults to the original model (source-free
distillation); teachers named in the config may be object-store URIs.
"""
from kfp import dsl

from .. import components as c
from .common import (DEFAULT_ENDPOINT, DEFAULT_SECRET, DEFAULT_TOLERATIONS, common, default_config,
                     evaluate_and_export, heavy, light, load_inputs)

TRAINING_RETRIES = 3


def build(strategy, gpu: bool = True):
    with_prune = "prune" in strategy.stages

    @dsl.pipeline(name=f"autocompress-{strategy.name.replace('_', '-')}" + ("" if gpu else "-cpu"),
                  description=strategy.description)
    def pipeline(model_uri: str, train_data_uri: str, eval_data_uri: str, test_data_uri: str = "",
                 config: str = default_config(strategy), metric: str = "top1", max_drop: float = 0.01,
                 drop_type: str = "absolute", model_filename: str = "", params_filename: str = "",
                 publish_uri: str = "", device: str = "gpu" if gpu else "cpu", gpu_count: int = 1,
                 batch_size: int = 32, tolerations: list = DEFAULT_TOLERATIONS, node_selector: dict = {},
                 object_store_secret: str = DEFAULT_SECRET, s3_endpoint: str = DEFAULT_ENDPOINT,
                 cpu_limit: str = "8", memory_limit: str = "32Gi"):
        place = dict(gpu=gpu, gpu_count=gpu_count, tolerations=tolerations, node_selector=node_selector,
                     cpu_limit=cpu_limit, memory_limit=memory_limit)
        model, train, evald, testd = load_inputs(
            c, model_uri=model_uri, config=config, model_filename=model_filename, params_filename=params_filename,
            data_uri=train_data_uri, data_name="train", eval_data_uri=eval_data_uri,
            test_data_uri=test_data_uri, batch_size=batch_size,
            secret=object_store_secret, s3_endpoint=s3_endpoint)
        student = model.outputs["model"]
        if with_prune:
            pruned = common(heavy(c.prune(model=student, train_data=train.outputs["dataset"], config=config, device=device,
                                          batch_size=batch_size),
                                  **place), object_store_secret, "prune channels")
            student = pruned.outputs["pruned"]
        trained = common(heavy(c.distill_train(student=student, teacher=model.outputs["model"],
                                               train_data=train.outputs["dataset"], eval_data=evald.outputs["dataset"],
                                               config=config, metric=metric, max_drop=max_drop, drop_type=drop_type,
                                               device=device, batch_size=batch_size, s3_endpoint=s3_endpoint),
                               **place),
                         object_store_secret, "train (distill)", cache=False, retries=TRAINING_RETRIES)
        evaluate_and_export(c, model=trained.outputs["trained"], original=model.outputs["model"], evald=evald, testd=testd,
                            config=config, metric=metric, max_drop=max_drop, drop_type=drop_type, device=device,
                            batch_size=batch_size, place=place, secret=object_store_secret, publish_uri=publish_uri,
                            s3_endpoint=s3_endpoint)

    pipeline.__name__ = strategy.name
    return pipeline
