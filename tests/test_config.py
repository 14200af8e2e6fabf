import pytest
import yaml

from autocompress import config as cfg
from autocompress import strategies
from autocompress.errors import ConfigError


def test_spec_defaults():
    q = cfg.QuantizationConfig()
    assert (q.weight_bits, q.activation_bits, q.is_full_quantize) == (8, 8, False)
    h = cfg.HyperParameterOptimizationConfig()
    assert h.max_quant_count == 20 and h.ptq_algo == ["KL", "hist", "avg", "mse"]
    d = cfg.DistillationConfig()
    assert d.merge_feed is True and d.distill_loss == "l2_loss"
    assert cfg.PruneConfig().criterion == "l1_norm"
    assert cfg.UnstructurePruneConfig().prune_mode == "ratio"
    assert cfg.TrainConfig(epochs=1).optimizer == "SGD"
    with pytest.raises(Exception, match="needs epochs or train_iter"):
        cfg.TrainConfig()


@pytest.mark.parametrize("strategy,name", [
    ({"QuantizationConfig": {}, "HyperParameterOptimizationConfig": {}}, "ptq_hpo"),
    ({"QuantizationConfig": {}, "DistillationConfig": {}}, "qat_distill"),
    ({"PruneConfig": {}, "DistillationConfig": {}}, "prune_distill"),
    ({"UnstructurePruneConfig": {}, "DistillationConfig": {}}, "sparse_distill"),
    ({"DistillationConfig": {}}, "distill"),
    ({"MultiTeacherDistillationConfig": {"teacher_model_dir": ["a"]}}, "multi_teacher_distill"),
])
def test_six_combinations(strategy, name):
    assert strategies.resolve(strategy)[0].name == name


def test_config_objects_accepted():
    combo, configs = strategies.resolve([cfg.QuantizationConfig(weight_bits=8), cfg.HyperParameterOptimizationConfig()])
    assert combo.name == "ptq_hpo" and configs["QuantizationConfig"].weight_bits == 8


def test_unsupported_combination_lists_the_supported_ones():
    with pytest.raises(ConfigError, match="unsupported strategy combination.*PruneConfig.*QuantizationConfig"):
        strategies.resolve({"QuantizationConfig": {}, "PruneConfig": {}})


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(ConfigError, match=r"QuantizationConfig.weight_bitz: unknown key; allowed keys: .*weight_bits"):
        strategies.resolve({"QuantizationConfig": {"weight_bitz": 8}, "HyperParameterOptimizationConfig": {}})


def test_unknown_strategy_class():
    with pytest.raises(ConfigError, match="unknown keys \\['QuantConfig'\\]"):
        strategies.resolve({"QuantConfig": {}})


def test_unknown_ptq_algo():
    with pytest.raises(ConfigError, match="unknown ptq_algo 'kl2'.*'KL', 'hist', 'mse', 'avg', 'abs_max'"):
        cfg.build(cfg.HyperParameterOptimizationConfig, {"ptq_algo": ["KL", "kl2"]})


@pytest.mark.parametrize("section,values,message", [
    ("DistillationConfig", {"distill_node_pair": ["a", "b", "c"]}, "odd number"),
    ("DistillationConfig", {"distill_loss": ["l2_loss", "soft_label_loss"], "distill_lambda": [1.0]},
     "distill_lambda has 1 values but distill_loss has 2"),
    ("DistillationConfig", {"distill_loss": "nope"}, "unknown distill_loss 'nope'"),
    ("MultiTeacherDistillationConfig", {"teacher_model_dir": ["a", "b"], "distill_loss": ["l2_loss"],
                                        "distill_lambda": [1.0, 1.0]}, "distill_loss has 1 entries but there are 2"),
    ("PruneConfig", {"pruned_ratio": 1.0}, r"must be in \[0, 1\)"),
    ("PruneConfig", {"criterion": "l3"}, "criterion"),
    ("UnstructurePruneConfig", {"prune_mode": "threshold"}, "needs a threshold"),
    ("TrainConfig", {"optimizer": "Adamm"}, "unknown optimizer 'Adamm'.*Adam"),
    ("TrainConfig", {"learning_rate": {"type": "Nope"}}, "paddle.optimizer.lr"),
    ("QuantizationConfig", {"quantize_op_types": ["conv3d_x"]}, "unknown op types"),
])
def test_validation_errors(section, values, message):
    cls = cfg.STRATEGY_CLASSES.get(section) or cfg.TrainConfig
    with pytest.raises(ConfigError, match=message):
        cfg.build(cls, values, section)


def test_yaml_run_config(tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "Model": {"model_dir": "model"}, "Data": {"train": "data/train", "eval": "data/eval"},
        "Eval": {"metric": "top1", "max_drop": 0.02}, "Device": "cpu", "SaveDir": "out",
        "QuantizationConfig": {}, "HyperParameterOptimizationConfig": {"max_quant_count": 4}}))
    rc = cfg.load_run_config(tmp_path / "run.yaml")
    assert rc.combination == "ptq_hpo"
    assert rc.Model.model_dir == str(tmp_path / "model")  # relative to the config file
    assert rc.strategy["HyperParameterOptimizationConfig"].max_quant_count == 4
    assert rc.SaveDir == "out" and rc.Eval.max_drop == 0.02


def test_yaml_unknown_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("Model: {model_dir: m}\nData: {}\nQuantizationConfig: {}\nHyperParameterOptimizationConfig: {}\nEvl: {}\n")
    with pytest.raises(ConfigError, match=r"unknown top-level keys \['Evl'\]"):
        cfg.load_run_config(path)


def test_train_config_rejected_for_ptq(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("Model: {model_dir: m}\nData: {}\nQuantizationConfig: {}\nHyperParameterOptimizationConfig: {}\n"
                    "TrainConfig: {epochs: 1}\n")
    with pytest.raises(ConfigError, match="does not train"):
        cfg.load_run_config(path)


def test_static_paddle_names_match_the_installed_paddle():
    import paddle.optimizer as po
    import paddle.optimizer.lr as plr
    from paddle.static.quantization.quant_config import SUPPORT_QUANTIZATION_OP_DICT

    from autocompress import paddle_names

    assert paddle_names.QUANTIZABLE_OP_TYPES == set(SUPPORT_QUANTIZATION_OP_DICT)
    assert paddle_names.OPTIMIZERS == {n for n in dir(po) if isinstance(getattr(po, n), type)
                                       and issubclass(getattr(po, n), po.Optimizer) and n != "Optimizer"}
    assert paddle_names.LR_SCHEDULERS == {n for n in dir(plr) if isinstance(getattr(plr, n), type)
                                          and issubclass(getattr(plr, n), plr.LRScheduler) and n != "LRScheduler"}


def test_config_validation_does_not_import_paddle():
    import subprocess
    import sys

    code = ("import sys, autocompress.config as c; c.load_run_config({'Model': {'model_dir': 'm'}, 'Data': {}, "
            "'QuantizationConfig': {}, 'DistillationConfig': {}, 'TrainConfig': {'epochs': 1, 'optimizer': 'Adam'}}); "
            "print('paddle' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
