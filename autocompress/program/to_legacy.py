"""Paddle 3 PIR inference model (`X.json`) -> an equivalent legacy `X.pdmodel` program, checked in Paddle Inference.

Paddle 3.3.1 translates legacy programs to PIR (`paddle.pir.translate_to_pir`, see convert.py) but has no
way back, while every compression engine here works on legacy programs. `pir_to_legacy` walks the PIR
program's global block and re-emits each operation as the legacy op it came from, for a whitelist of
common inference operations (`supported_ops()`), with the slot / attribute names read off the
translator (`translate_to_pir` of the PP-OCR and digits models, compared op by op):

- `pd_op.data` -> a feed variable of the same name, shape and dtype;
- `builtin.parameter` -> a persistable variable named by `parameter_name` (weights come from the
  `.pdiparams`, by name);
- `pd_op.fetch` -> a fetch target; the variable keeps the fetch name (`fetch_name_0`, `softmax_0.tmp_0`);
- `pd_op.full` / `pd_op.full_int_array` -> constants: folded into the attribute the legacy op has for
  them (`ksize`, `shape`, `axes`, `axis`, `dropout_prob`, ...), else emitted as `fill_constant` /
  `assign_value`; `builtin.combine` -> the list of its values (`concat`'s `X`, `reshape2`'s `ShapeTensor`);
- every other operation through `_RULES` (PIR input / output / attribute name -> legacy slot / attribute).

The result is saved with `paddle.static.save_inference_model` (legacy), which prunes what no output needs,
and both models are run through a stock Paddle Inference predictor on a sample feed; outputs must agree
within 1e-4 relative. An operation outside the table raises a ModelError naming it.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir, write_json_atomic
from ..errors import ModelError
from ..model_io import METADATA_FILE, InputGuard, ModelFiles, copy_model, paddle_error_line, sha256_file
from ..version import __version__

log = logging.getLogger("autocompress.to_legacy")

RTOL = 1e-4  # max |pir - legacy| <= RTOL * max(1, max |pir|), per output
_DROP_ATTRS = {"stop_gradient", "persistable", "struct_name", "place", "op_callstack", "op_role", "op_namescope"}
# PIR DataType name -> legacy VarType name
_VARTYPE = {"FLOAT32": "FP32", "FLOAT64": "FP64", "FLOAT16": "FP16", "BFLOAT16": "BF16", "INT64": "INT64",
            "INT32": "INT32", "INT16": "INT16", "INT8": "INT8", "UINT8": "UINT8", "BOOL": "BOOL"}


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one PIR operation becomes one legacy op."""
    legacy: str
    inputs: dict  # PIR input name -> legacy input slot
    outputs: dict  # PIR output name -> legacy output slot
    attrs: dict = dataclasses.field(default_factory=dict)  # PIR attr -> legacy attr (others: same name)
    const_attrs: dict = dataclasses.field(default_factory=dict)  # PIR input (a constant) -> legacy attr
    fixed: dict = dataclasses.field(default_factory=dict)  # legacy attrs set outright
    # a const_attrs input computed at run time -> (legacy slot for one tensor, legacy slot for a list of them)
    dynamic: dict = dataclasses.field(default_factory=dict)
    xshape: bool = False  # the legacy op has an XShape output PIR dropped


def _unary(legacy, **attrs):
    return Rule(legacy, {"x": "X"}, {"out": "Out"}, attrs=attrs)


def _binary(legacy):
    return Rule(legacy, {"x": "X", "y": "Y"}, {"out": "Out"}, fixed={"axis": -1})


_INTERP_INPUTS = {"x": "X", "out_size": "OutSize", "size_tensor": "SizeTensor", "scale_tensor": "Scale"}
_CONV = dict(inputs={"input": "Input", "filter": "Filter"}, outputs={"out": "Output"})
_RULES: dict[str, Rule] = {
    "pd_op.conv2d": Rule("conv2d", **_CONV),
    "pd_op.depthwise_conv2d": Rule("depthwise_conv2d", **_CONV),
    "pd_op.conv2d_transpose": Rule("conv2d_transpose", inputs={"x": "Input", "filter": "Filter"},
                                   outputs={"out": "Output"}, const_attrs={"output_size": "output_size"}),
    "pd_op.depthwise_conv2d_transpose": Rule("depthwise_conv2d_transpose", inputs={"x": "Input", "filter": "Filter"},
                                             outputs={"out": "Output"}, const_attrs={"output_size": "output_size"}),
    "pd_op.batch_norm": Rule("batch_norm", {"x": "X", "mean": "Mean", "variance": "Variance", "scale": "Scale",
                                            "bias": "Bias"},
                             {"out": "Y", "mean_out": "MeanOut", "variance_out": "VarianceOut",
                              "saved_mean": "SavedMean", "saved_variance": "SavedVariance",
                              "reserve_space": "ReserveSpace"}, attrs={"data_format": "data_layout"}),
    "pd_op.layer_norm": Rule("layer_norm", {"x": "X", "scale": "Scale", "bias": "Bias"},
                             {"out": "Y", "mean": "Mean", "variance": "Variance"}),
    "pd_op.matmul": Rule("matmul_v2", {"x": "X", "y": "Y"}, {"out": "Out"},
                         attrs={"transpose_x": "trans_x", "transpose_y": "trans_y"}),
    "pd_op.add": _binary("elementwise_add"),
    "pd_op.subtract": _binary("elementwise_sub"),
    "pd_op.multiply": _binary("elementwise_mul"),
    "pd_op.divide": _binary("elementwise_div"),
    "pd_op.floor_divide": _binary("elementwise_floordiv"),
    "pd_op.remainder": _binary("elementwise_mod"),
    "pd_op.elementwise_pow": _binary("elementwise_pow"),
    "pd_op.maximum": _binary("elementwise_max"),
    "pd_op.minimum": _binary("elementwise_min"),
    "pd_op.relu": _unary("relu"),
    "pd_op.relu6": _unary("relu6"),
    "pd_op.sigmoid": _unary("sigmoid"),
    "pd_op.tanh": _unary("tanh"),
    "pd_op.hardswish": _unary("hard_swish"),
    "pd_op.hardsigmoid": _unary("hard_sigmoid"),
    "pd_op.swish": _unary("swish"),
    "pd_op.silu": _unary("silu"),
    "pd_op.gelu": _unary("gelu"),
    "pd_op.leaky_relu": _unary("leaky_relu", negative_slope="alpha"),
    "pd_op.sqrt": _unary("sqrt"),
    "pd_op.exp": _unary("exp"),
    "pd_op.abs": _unary("abs"),
    "pd_op.assign": _unary("assign"),
    "pd_op.softmax": _unary("softmax"),
    "pd_op.cast": Rule("cast", {"x": "X"}, {"out": "Out"}, attrs={"dtype": "out_dtype"}),
    "pd_op.pool2d": Rule("pool2d", {"x": "X"}, {"out": "Out"}, const_attrs={"kernel_size": "ksize"}),
    "pd_op.flatten": Rule("flatten_contiguous_range", {"x": "X"}, {"out": "Out"}, xshape=True),
    "pd_op.transpose": Rule("transpose2", {"x": "X"}, {"out": "Out"}, attrs={"perm": "axis"}, xshape=True),
    "pd_op.squeeze": Rule("squeeze2", {"x": "X"}, {"out": "Out"}, const_attrs={"axis": "axes"}, xshape=True),
    "pd_op.unsqueeze": Rule("unsqueeze2", {"x": "X"}, {"out": "Out"}, const_attrs={"axis": "axes"}, xshape=True),
    "pd_op.concat": Rule("concat", {"x": "X"}, {"out": "Out"}, const_attrs={"axis": "axis"}),
    "pd_op.scale": Rule("scale", {"x": "X"}, {"out": "Out"}, const_attrs={"scale": "scale"}),
    "pd_op.dropout": Rule("dropout", {"x": "X"}, {"out": "Out", "mask": "Mask"}, const_attrs={"p": "dropout_prob"},
                          attrs={"mode": "dropout_implementation"}),
    "pd_op.shape": Rule("shape", {"input": "Input"}, {"out": "Out"}),
    "pd_op.shape64": Rule("shape64", {"input": "input"}, {"out": "out"}),
    "pd_op.slice": Rule("slice", {"input": "Input"}, {"out": "Out"},
                        const_attrs={"starts": "starts", "ends": "ends"},
                        dynamic={"starts": ("StartsTensor", "StartsTensorList"),
                                 "ends": ("EndsTensor", "EndsTensorList")}),
    "pd_op.nearest_interp": Rule("nearest_interp_v2", _INTERP_INPUTS, {"output": "Out"},
                                 attrs={"data_format": "data_layout"}),
    "pd_op.bilinear_interp": Rule("bilinear_interp_v2", _INTERP_INPUTS, {"output": "Out"},
                                  attrs={"data_format": "data_layout"}),
    "pd_op.mean": Rule("reduce_mean", {"x": "X"}, {"out": "Out"}, attrs={"keepdim": "keep_dim"},
                       const_attrs={"axis": "dim"}),
    "pd_op.sum": Rule("reduce_sum", {"x": "X"}, {"out": "Out"}, attrs={"keepdim": "keep_dim", "dtype": "out_dtype"},
                      const_attrs={"axis": "dim"}),
    "pd_op.max": Rule("reduce_max", {"x": "X"}, {"out": "Out"}, attrs={"keepdim": "keep_dim"},
                      const_attrs={"axis": "dim"}),
    "pd_op.min": Rule("reduce_min", {"x": "X"}, {"out": "Out"}, attrs={"keepdim": "keep_dim"},
                      const_attrs={"axis": "dim"}),
    "pd_op.argmax": Rule("arg_max", {"x": "X"}, {"out": "Out"}, const_attrs={"axis": "axis"}),
    "pd_op.stack": Rule("stack", {"x": "X"}, {"out": "Y"}),
    "pd_op.split": Rule("split", {"x": "X"}, {"out": "Out"}, const_attrs={"sections": "sections", "axis": "axis"}),
    "pd_op.split_with_num": Rule("split", {"x": "X"}, {"out": "Out"}, const_attrs={"axis": "axis"}),
    "pd_op.pad3d": Rule("pad3d", {"x": "X"}, {"out": "Out"}, attrs={"pad_value": "value"},
                        const_attrs={"paddings": "paddings"}),
    "pd_op.pow": Rule("pow", {"x": "X"}, {"out": "Out"}, attrs={"y": "factor"}),
    "pd_op.rsqrt": _unary("rsqrt"),
    "pd_op.erf": _unary("erf"),
    "pd_op.gather": Rule("gather", {"x": "X", "index": "Index"}, {"out": "Out"}, const_attrs={"axis": "axis"}),
    "pd_op.embedding": Rule("lookup_table_v2", {"x": "Ids", "weight": "W"}, {"out": "Out"}),
    "pd_op.clip": Rule("clip", {"x": "X"}, {"out": "Out"}, const_attrs={"min": "min", "max": "max"}),
}
_RULES["pd_op.batch_norm_"] = _RULES["pd_op.batch_norm"]
_RULES["pd_op.relu_"] = _RULES["pd_op.relu"]
_RULES["pd_op.hardswish_"] = _RULES["pd_op.hardswish"]
_RULES["pd_op.sigmoid_"] = _RULES["pd_op.sigmoid"]
_RULES["pd_op.add_"] = _RULES["pd_op.add"]
_RULES["pd_op.multiply_"] = _RULES["pd_op.multiply"]
_RULES["pd_op.scale_"] = _RULES["pd_op.scale"]
# handled in code, not through a Rule
_SPECIAL = ("pd_op.data", "builtin.parameter", "pd_op.parameter", "pd_op.fetch", "pd_op.full", "pd_op.full_int_array",
            "pd_op.assign_value", "pd_op.assign_value_", "builtin.combine", "builtin.split", "pd_op.reshape",
            "pd_op.reshape_")


def supported_ops() -> list[str]:
    """The PIR operations `pir_to_legacy` translates."""
    return sorted(set(_RULES) | set(_SPECIAL))


def pir_to_legacy(files: ModelFiles, out_dir, feed: dict | None = None,
                  feed_shapes: dict[str, list[int]] | None = None) -> ModelFiles:
    """Translate the PIR inference model `files` (format 'pir-json') into an equivalent legacy model in
    `out_dir` (`X.json` -> `X.pdmodel`, `X.pdiparams` keeps its name), checked in Paddle Inference on a
    sample feed (`feed`, else one made from the input shapes: batch 2, 64 for other dynamic dims, or
    `feed_shapes`). The input files are never written to."""
    import paddle

    from .convert import _sample_feed, check_out_dir

    if files.format != "pir-json":
        raise ModelError(f"{files.model_path} is not a Paddle 3 PIR model (it is {files.format}); nothing to translate")
    out_dir = check_out_dir(files, out_dir)
    guard = InputGuard(files)
    start = time.perf_counter()
    stem = Path(files.model_filename).stem
    with tempfile.TemporaryDirectory(prefix="autocompress-to-legacy-") as work:
        original = copy_model(files, Path(work) / "input")
        paddle.enable_static()
        scope = paddle.static.Scope()
        exe = paddle.static.Executor(paddle.CPUPlace())
        with paddle.pir_utils.IrGuard():
            try:
                with paddle.static.scope_guard(scope):
                    pir_program, _, _ = paddle.static.load_inference_model(original.path_prefix, exe)
            except Exception as err:
                raise ModelError(f"could not load the PIR model {files.model_path}: {type(err).__name__}: "
                                 f"{paddle_error_line(err)}") from None
            translation = _Translator(pir_program, files.model_path)
            with paddle.pir_utils.OldIrGuard():
                translation.run()
        sample = _sample_feed(translation.feed_specs, feed, feed_shapes)
        with atomic_dir(out_dir) as tmp:
            out = ModelFiles(Path(tmp), f"{stem}.pdmodel", f"{stem}.pdiparams", "pdmodel")
            with paddle.pir_utils.OldIrGuard():
                program = translation.program
                block = program.global_block()
                with paddle.static.scope_guard(scope):
                    paddle.static.save_inference_model(
                        str(Path(tmp) / stem), [block.var(n) for n in translation.feed_names],
                        [block.var(n) for n in translation.fetch_names], paddle.static.Executor(paddle.CPUPlace()),
                        program=program, clip_extra=True)
            if not out.params_path.exists():  # a model without weights
                out = dataclasses.replace(out, params_filename=None)
            check = _compare(original, out, sample, files.model_path)
            seconds = time.perf_counter() - start
            write_json_atomic(Path(tmp) / METADATA_FILE, {
                "format": out.format, "model_filename": out.model_filename, "params_filename": out.params_filename,
                "sha256": {p.name: sha256_file(p) for p in out.files()},
                "size_bytes": int(sum(p.stat().st_size for p in out.files())),
                "translation": {"from": files.model_filename,
                                "source_sha256": {Path(p).name: h for p, h in guard.hashes.items()},
                                "paddle_version": paddle.__version__, "seconds": round(seconds, 3),
                                "pir_ops": translation.op_counts, **check},
                "autocompress_version": __version__})
            guard.verify()
    log.info("translated PIR %s to legacy %s in %.1f s; max |pir - legacy| = %.3g (tolerance %.3g)", files.model_path,
             out_dir / out.model_filename, seconds, check["max_abs_diff"], check["tolerance"])
    return dataclasses.replace(out, model_dir=out_dir)


def _unsupported(op_name: str, model_path) -> ModelError:
    import paddle

    return ModelError(
        f"{model_path} uses the operation {op_name!r}, which autocompress cannot translate from Paddle 3 PIR to the "
        f"legacy program format yet (Paddle {paddle.__version__} has no PIR -> legacy translator; supported: "
        f"{', '.join(o for o in supported_ops() if o.startswith('pd_op.'))}). Meanwhile re-export the model in the "
        "legacy format: inside `with paddle.pir_utils.OldIrGuard():` call `paddle.jit.save(layer, path, "
        "input_spec=...)` (or run the export with FLAGS_enable_pir_api=0), and compress the .pdmodel")


def _dtype_name(dtype) -> str:
    name = getattr(dtype, "name", None) or str(dtype).rsplit(".", 1)[-1]
    return name.upper()


def _numpy_dtype(dtype) -> str:
    name = _dtype_name(dtype)
    if name not in _VARTYPE:
        raise ModelError(f"data type {dtype} has no legacy equivalent")
    return "uint16" if name == "BFLOAT16" else name.lower()  # legacy programs hold bfloat16 as uint16


def _vartype(dtype) -> int:
    import paddle

    if _dtype_name(dtype) == "UNDEFINED":  # e.g. sum's dtype: "as the input"
        return -1
    name = _VARTYPE.get(_dtype_name(dtype))
    if name is None:
        raise ModelError(f"data type {dtype} has no legacy equivalent")
    return int(getattr(paddle.base.core.VarDesc.VarType, name))


def _exact(fill, dtype) -> str:
    """fill_constant's `str_value`, which Paddle reads in preference to the float32 `value` attribute: exact for
    int64 (2147483647, a slice's open end) and float64."""
    fill = float(fill)
    if _numpy_dtype(dtype) in ("int64", "int32", "int16", "int8", "uint8", "bool") and fill.is_integer():
        return str(int(fill))
    return "nan" if fill != fill else "inf" if fill == float("inf") else "-inf" if fill == float("-inf") else repr(fill)


def _value_info(value):
    """(shape, dtype) of a PIR value, None for one without a tensor type (e.g. an unused reserve space)."""
    try:
        return [int(d) for d in value.shape], value.dtype
    except Exception:
        return None


class _Translator:
    def __init__(self, pir_program, model_path):
        self.pir = pir_program
        self.model_path = model_path
        self.names: dict[str, str] = {}  # PIR value id -> legacy var name
        # value id -> ("full", value, shape, dtype) | ("array", values, dtype, shape)
        self.consts: dict[str, tuple] = {}
        self.lists: dict[str, list] = {}  # value id of a builtin.combine -> its values
        self.fetch_of: dict[str, str] = {}  # value id -> fetch name
        self.feed_names: list[str] = []
        self.fetch_names: list[str] = []
        self.feed_specs: list[dict] = []
        self.counter = 0
        self.reserved: set[str] = set()  # the model's own names
        self.op_counts: dict[str, int] = {}

    # -- names and variables -------------------------------------------------------------------------------
    def _new_name(self, legacy_type: str) -> str:
        """A fresh name, never one of the model's feed, weight or fetch names (`softmax_11.tmp_0`...)."""
        while True:
            self.counter += 1
            name = f"{legacy_type}_{self.counter}.tmp_0"
            if name not in self.reserved and not self.block.has_var(name):
                return name

    def _create(self, value, legacy_type: str, name: str | None = None):
        info = _value_info(value)
        if info is None:
            return None
        name = name or self.fetch_of.get(value.id) or self._new_name(legacy_type)
        shape, dtype = info
        var = self.block.create_var(name=name, shape=shape, dtype=_numpy_dtype(dtype))
        self.names[value.id] = name
        return var

    def _var(self, value, legacy_type="value"):
        """The legacy variable of a PIR value, emitting a constant on first use."""
        if value.id in self.names:
            return self.block.var(self.names[value.id])
        if value.id in self.consts:
            return self._emit_const(value)
        op = value.get_defining_op()
        raise ModelError(f"{self.model_path}: the value made by {op.name() if op else '?'} is used before it is "
                         "defined; cannot translate this program")

    def _emit_const(self, value):
        const = self.consts[value.id]
        var = self._create(value, "fill_constant" if const[0] == "full" else "assign_value")
        if const[0] == "full":
            _, fill, shape, dtype = const
            self.block.append_op(type="fill_constant", outputs={"Out": [var]},
                                 attrs={"shape": [int(s) for s in shape], "value": float(fill),
                                        "dtype": _vartype(dtype), "str_value": _exact(fill, dtype)})
        else:
            _, values, dtype, shape = const
            cast = float if _numpy_dtype(dtype).startswith("float") else bool if _numpy_dtype(dtype) == "bool" else int
            self.block.append_op(type="assign_value", outputs={"Out": [var]},
                                 attrs={"shape": [int(s) for s in shape], "dtype": _vartype(dtype),
                                        "values": [cast(v) for v in values]})
        return var

    def _const_value(self, value, op_name: str, slot: str):
        if value.id not in self.consts:
            raise ModelError(f"{self.model_path}: {op_name}'s input {slot!r} is computed at run time; autocompress "
                             "translates it to the legacy format only where it is a constant. Re-export the model "
                             "in the legacy format (paddle.jit.save inside paddle.pir_utils.OldIrGuard())")
        const = self.consts[value.id]
        if const[0] == "array":
            return list(const[1])
        return const[1]

    def _folded(self, value):
        """A constant input's value (a list for a full_int_array or a combine of constants), else None."""
        if value.id in self.consts:
            const = self.consts[value.id]
            return list(const[1]) if const[0] == "array" else const[1]
        if value.id in self.lists and all(p.id in self.consts for p in self.lists[value.id]):
            return [self._scalar(p, "") for p in self.lists[value.id]]
        return None

    def _scalar(self, value, op_name: str) -> int:
        const = self._const_value(value, op_name, "shape")
        return int(const[0] if isinstance(const, list) else const)

    # -- the walk ------------------------------------------------------------------------------------------
    def run(self):
        import paddle

        self.program = paddle.static.Program()
        self.block = self.program.global_block()
        ops = list(self.pir.global_block().ops)
        for op in ops:
            self.op_counts[op.name()] = self.op_counts.get(op.name(), 0) + 1
        unknown = sorted({op.name() for op in ops if op.name() not in _RULES and op.name() not in _SPECIAL})
        if unknown:
            raise _unsupported(unknown[0], self.model_path) if len(unknown) == 1 else ModelError(
                str(_unsupported(unknown[0], self.model_path)).replace(
                    f"the operation {unknown[0]!r}", f"the operations {', '.join(repr(u) for u in unknown)}"))
        for op in ops:
            if op.name() == "pd_op.fetch":
                self.fetch_of.setdefault(op.operand_source(0).id, op.attrs()["name"])
            if op.name() in ("pd_op.fetch", "pd_op.data", "builtin.parameter", "pd_op.parameter"):
                self.reserved.update(op.attrs()[k] for k in ("name", "parameter_name") if op.has_attr(k))
        with paddle.static.program_guard(self.program, paddle.static.Program()):
            for op in ops:
                try:
                    self._translate(op)
                except ModelError:
                    raise
                except Exception as err:  # Paddle's legacy InferShape refusing what we emitted
                    raise ModelError(f"{self.model_path}: translating {op.name()} to the legacy format failed in "
                                     f"Paddle {paddle.__version__}: {paddle_error_line(err)}; please report this, and "
                                     "meanwhile re-export the model in the legacy format (paddle.jit.save inside "
                                     "paddle.pir_utils.OldIrGuard())") from None

    def _translate(self, op):
        name = op.name()
        attrs = op.attrs()
        if name == "pd_op.data":
            value = op.result(0)
            shape, dtype = _value_info(value)
            var = self.block.create_var(name=attrs["name"], shape=shape, dtype=_numpy_dtype(dtype),
                                        need_check_feed=True)
            var.stop_gradient = True
            self.names[value.id] = attrs["name"]
            self.feed_names.append(attrs["name"])
            self.feed_specs.append({"name": attrs["name"], "shape": shape, "dtype": _numpy_dtype(dtype)})
        elif name in ("builtin.parameter", "pd_op.parameter"):
            value = op.result(0)
            shape, dtype = _value_info(value)
            pname = attrs["parameter_name"]
            self.block.create_var(name=pname, shape=shape, dtype=_numpy_dtype(dtype), persistable=True)
            self.names[value.id] = pname
        elif name == "pd_op.fetch":
            value = op.operand_source(0)
            fetch = attrs["name"]
            if self.names.get(value.id) != fetch:  # a feed / weight / twice-fetched value: copy it
                src = self._var(value)
                out = self._create(op.result(0), "assign", name=fetch)
                self.block.append_op(type="assign", inputs={"X": [src]}, outputs={"Out": [out]})
            self.fetch_names.append(fetch)
        elif name == "pd_op.full":
            self.consts[op.result(0).id] = ("full", attrs["value"], list(attrs["shape"]), attrs["dtype"])
        elif name == "pd_op.full_int_array":
            self.consts[op.result(0).id] = ("array", list(attrs["value"]), attrs["dtype"], [len(attrs["value"])])
        elif name in ("pd_op.assign_value", "pd_op.assign_value_"):  # a literal tensor (paddle.to_tensor in forward)
            self.consts[op.result(0).id] = ("array", list(attrs["values"]), attrs["dtype"], list(attrs["shape"]))
        elif name == "builtin.split":  # its results were named by the op that made the vector
            missing = [v for v in op.results() if v.id not in self.names]
            if missing:
                raise ModelError(f"{self.model_path}: builtin.split of a value not made by pd_op.split; cannot "
                                 "translate this program")
        elif name == "builtin.combine":
            self.lists[op.result(0).id] = list(op.operands_source())
        elif name in ("pd_op.reshape", "pd_op.reshape_"):
            self._reshape(op)
        else:
            self._rule(op, _RULES[name])

    def _inputs(self, value, legacy_type):
        if value.id in self.lists:
            return [self._var(v, legacy_type) for v in self.lists[value.id]]
        return [self._var(value, legacy_type)]

    def _rule(self, op, rule: Rule):
        from paddle.base.framework import OpProtoHolder

        proto = OpProtoHolder.instance().get_op_proto(rule.legacy)
        attr_types = {a.name: a.type for a in proto.attrs}
        in_names, out_names = op.get_input_names(), op.get_output_names()
        inputs, attrs, dynamic = {}, {}, []
        for i, pir_name in enumerate(in_names):
            value = op.operand_source(i)
            if pir_name in rule.const_attrs:
                if value is None or not value.initialized():
                    continue
                const = self._folded(value)
                if const is not None:
                    attrs[rule.const_attrs[pir_name]] = const
                elif pir_name in rule.dynamic:  # computed at run time: the legacy op's tensor input
                    one, many = rule.dynamic[pir_name]
                    if value.id in self.lists:
                        inputs[many] = self._inputs(value, rule.legacy)
                    else:
                        inputs[one] = [self._var(value)]
                    dynamic.append(rule.const_attrs[pir_name])
                else:
                    self._const_value(value, op.name(), pir_name)  # raises, naming the input
                continue
            if pir_name not in rule.inputs:
                if value is not None and value.initialized():
                    raise ModelError(f"{self.model_path}: {op.name()}'s input {pir_name!r} is set, which the "
                                     "legacy translation does not support yet")
                continue
            if value is None or not value.initialized():
                continue
            inputs[rule.inputs[pir_name]] = self._inputs(value, rule.legacy)
        for key, val in op.attrs().items():
            if key in _DROP_ATTRS:
                continue
            key = rule.attrs.get(key, key)
            if key in attr_types:
                attrs[key] = val
        attrs.update(rule.fixed)
        if dynamic and rule.legacy == "slice":  # what legacy programs hold for run-time bounds
            n = len(attrs.get("axes", []))
            attrs.update({k: [-1] * n for k in dynamic}, infer_flags=[-1] * n)
        if rule.legacy == "cast":
            attrs["in_dtype"] = op.operand_source(0).dtype
        if rule.legacy.startswith("reduce_") and not attrs.get("dim"):
            attrs.update(dim=[0], reduce_all=True)  # PIR's empty axis: over everything
        attrs = {k: _coerce(v, attr_types.get(k)) for k, v in attrs.items()}
        outputs = {}
        for i, pir_name in enumerate(out_names):
            slot = rule.outputs.get(pir_name)
            if slot is None:
                raise ModelError(f"{self.model_path}: {op.name()}'s output {pir_name!r} has no legacy slot; "
                                 "please report this")
            value = op.result(i)
            if rule.legacy == "split":  # a vector of tensors, unpacked by the builtin.split that uses it
                outputs[slot] = self._unpacked(value, op.name())
                continue
            if rule.legacy == "batch_norm" and slot in ("MeanOut", "VarianceOut"):
                # in place, as in legacy programs: MeanOut is the Mean variable
                var = inputs["Mean" if slot == "MeanOut" else "Variance"][0]
                self.names[value.id] = var.name
                outputs[slot] = [var]
                continue
            var = self._create(value, rule.legacy)
            if var is not None:
                outputs[slot] = [var]
        if rule.xshape:
            x = inputs["X"][0]
            outputs["XShape"] = [self.block.create_var(name=self._new_name(rule.legacy + "_xshape"),
                                                       shape=[0] + list(x.shape), dtype=x.dtype)]
        self.block.append_op(type=rule.legacy, inputs=inputs, outputs=outputs, attrs=attrs)

    def _unpacked(self, vector, op_name: str) -> list:
        users = vector.all_used_ops()
        if len(users) != 1 or users[0].name() != "builtin.split":
            used_by = [u.name() for u in users]
            raise ModelError(f"{self.model_path}: {op_name}'s outputs are used as a list ({used_by}); the legacy "
                             "translation supports them unpacked (builtin.split) only")
        return [self._create(v, "split") for v in users[0].results()]

    def _reshape(self, op):
        x, shape_value = op.operand_source(0), op.operand_source(1)
        inputs = {"X": [self._var(x)]}
        attrs = {}
        if shape_value.id in self.consts:
            attrs["shape"] = [int(s) for s in self._const_value(shape_value, op.name(), "shape")]
        elif shape_value.id in self.lists:
            parts = self.lists[shape_value.id]
            if all(p.id in self.consts for p in parts):
                attrs["shape"] = [self._scalar(p, op.name()) for p in parts]
            else:  # run-time pieces; the attribute still gives the compile-time shape, as legacy programs hold
                inputs["ShapeTensor"] = [self._var(p) for p in parts]
                attrs["shape"] = [self._scalar(p, op.name()) if p.id in self.consts else -1 for p in parts]
        else:
            inputs["Shape"] = [self._var(shape_value)]
        out = self._create(op.result(0), "reshape2")
        xshape = self.block.create_var(name=self._new_name("reshape2_xshape"), shape=[0] + list(inputs["X"][0].shape),
                                       dtype=inputs["X"][0].dtype)
        self.block.append_op(type="reshape2", inputs=inputs, outputs={"Out": [out], "XShape": [xshape]}, attrs=attrs)


def _coerce(value, attr_type):
    """A PIR attribute value as the legacy attribute's type (framework.proto AttrType)."""
    if hasattr(value, "name") and type(value).__name__ in ("DataType", "dtype"):
        return _vartype(value)
    if attr_type in (0, 9):  # INT, LONG
        return int(value[0] if isinstance(value, (list, tuple)) else value)
    if attr_type == 1:  # FLOAT
        return float(value[0] if isinstance(value, (list, tuple)) else value)
    if attr_type in (3, 11):  # INTS, LONGS
        return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if attr_type == 4:  # FLOATS
        return [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if attr_type == 6:  # BOOLEAN
        return bool(value)
    return value


def _compare(original: ModelFiles, translated: ModelFiles, feed: dict, source) -> dict:
    """Both models through Paddle Inference on `feed` (oneDNN off for both where the PIR model fails with it:
    Paddle 3.3.1's `nearest_interp`, docs/pir.md)."""
    import paddle

    from .convert import inference_outputs as run

    def inference_outputs(files, feed, onednn=True):
        if files.params_path is None:  # a model without weights: Config(model, "") (Config(model) wants a folder)
            files = types.SimpleNamespace(model_path=files.model_path, params_path="")
        return run(files, feed, onednn=onednn)

    shapes = {k: list(v.shape) for k, v in feed.items()}
    runtime = "Paddle Inference CPU, stock Config (oneDNN on)"
    try:
        try:
            ref_names, ref = inference_outputs(original, feed)
            onednn = True
        except Exception:
            ref_names, ref = inference_outputs(original, feed, onednn=False)
            onednn = False
            runtime = "Paddle Inference CPU, oneDNN off (config.disable_mkldnn())"
    except Exception as err:
        raise ModelError(f"the PIR model {source} fails on the sample feed {shapes} in Paddle Inference "
                         f"{paddle.__version__}: {paddle_error_line(err)}. Pass feed= (a real input) or feed_shapes= "
                         "(name -> shape) to pir_to_legacy") from None
    try:
        names, got = inference_outputs(translated, feed, onednn=onednn)
    except Exception as err:
        raise ModelError(f"the legacy model translated from {source} fails in Paddle Inference {paddle.__version__}: "
                         f"{paddle_error_line(err)}; please report this") from None
    if names != ref_names or [g.shape for g in got] != [r.shape for r in ref]:
        raise ModelError(f"the legacy model's outputs {names} {[g.shape for g in got]} differ from the PIR model's "
                         f"{ref_names} {[r.shape for r in ref]} (Paddle {paddle.__version__}); please report this")
    diffs = {n: _max_abs(r, g) for n, r, g in zip(names, ref, got)}
    tols = {n: RTOL * max(1.0, _max_abs(r, np.zeros_like(r))) for n, r in zip(names, ref)}
    bad = [n for n in names if not diffs[n] <= tols[n]]  # `not <=` also catches NaN
    if bad:
        raise ModelError(f"the legacy model's output {bad[0]!r} differs from the PIR model's by {diffs[bad[0]]:.3g} "
                         f"(tolerance {tols[bad[0]]:.3g}) on the sample feed {shapes} (Paddle {paddle.__version__}); "
                         "the translation changed the model, nothing was written")
    return {"inputs": shapes, "outputs": names, "max_abs_diff": max(diffs.values(), default=0.0),
            "max_abs_diff_per_output": diffs, "tolerance": max(tols.values(), default=0.0), "runtime": runtime}


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
