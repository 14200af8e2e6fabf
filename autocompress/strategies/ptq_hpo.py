"""Spec combination 1: QuantizationConfig + HyperParameterOptimizationConfig — post-training
quantization with hyper-parameter search. Statistics are collected once (`calibrate`); the search
(`ptq_search`, one or several parts from the shared statistics) scores every trial and re-measures
the finalists on the deployment backend; `select_best` keeps the best part."""
from .base import Strategy

STRATEGY = Strategy(
    name="ptq_hpo",
    configs=("QuantizationConfig", "HyperParameterOptimizationConfig"),
    description="Post-training quantization with hyper-parameter search (calibrate once, parallel trials, "
                "select, evaluate, export).",
    stages=("calibrate", "ptq_search", "select_best"),
    data_role="calibration",
    pipeline_config={"QuantizationConfig": {}, "HyperParameterOptimizationConfig": {"max_quant_count": 20}},
)
