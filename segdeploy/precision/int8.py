"""Post-training INT8 quantization into explicit Q/DQ form, in the way each runtime needs it.

Two schemes (``targets.QUANTIZATION_ROUTES``):

* ``tensorrt``: TensorRT's explicit-quantization rules - symmetric (zero point 0) int8
  activations, per-channel symmetric int8 weights (axis 0 for Conv, 1 for ConvTranspose), no
  quantized bias (so no INT32 DequantizeLinear), and Q/DQ on the inputs of weighted layers only,
  the placement TensorRT fuses best (Conv+ReLU+Q). ONNX Runtime's ``quantize_static`` defaults
  (asymmetric activations, int32 bias) break these rules, so every setting is spelled out.
* ``ort-cpu``: what ONNX Runtime's CPU kernels run fast - asymmetric uint8 activations with
  per-channel int8 weights (u8s8), int32 bias, every op ORT can quantize.

Calibration runs once (ONNX Runtime's calibrators, one batch at a time so memory stays flat) and
its tensor ranges are saved; every later build - e.g. each step of the sensitivity analysis -
quantizes from the saved ranges without running the model again.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import BadInputError, MissingDependencyError, VerificationError
from ..onnx_io import load_onnx
from .data import ImageSet
from .graph import WEIGHT_CHANNEL_AXIS, WEIGHTED_OPS, name_nodes, weighted_layers

METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Scheme:
    route: str
    activations: str  # "int8" | "uint8"
    activation_symmetric: bool
    quantize_bias: bool
    #: Op types whose inputs get Q/DQ; None: every op ONNX Runtime can quantize.
    op_types: tuple[str, ...] | None

    def describe(self) -> dict:
        return {
            "route": self.route,
            "activations": f"{self.activations} per-tensor {'symmetric' if self.activation_symmetric else 'asymmetric'}",
            "weights": "int8 per-channel symmetric",
            "bias": "int32 (quantized)" if self.quantize_bias else "float (not quantized)",
            "op_types": list(self.op_types) if self.op_types else "all ONNX Runtime quantizable ops",
            "format": "QDQ",
        }


SCHEMES = {
    "tensorrt": Scheme("tensorrt", "int8", True, False, WEIGHTED_OPS),
    "ort-cpu": Scheme("ort-cpu", "uint8", False, True, None),
}


@contextlib.contextmanager
def _working_directory(folder: Path):
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _quantization_api():
    try:
        from onnxruntime import quantization
    except ImportError:
        raise MissingDependencyError("onnxruntime", "ort", "INT8 calibration and quantization use it") from None
    return quantization


class Int8Builder:
    """Calibrates an FP32 model once and builds Q/DQ models from the saved ranges.

    ``workdir`` holds the pre-processed model; ``calibration_cache`` the tensor ranges (JSON).
    """

    def __init__(self, fp32_path: Path, scheme: Scheme, method: str, workdir: Path, calibration_cache: Path, percentile: float = 99.999):
        if method not in METHODS:
            raise BadInputError(f"unknown calibration method {method!r}; choose from: {', '.join(METHODS)}")
        self.scheme = scheme
        self.method = method
        self.percentile = percentile
        self.workdir = Path(workdir).resolve()
        self.calibration_cache = Path(calibration_cache)
        self.prepared = self.workdir / "prepared.onnx"
        fp32_path = Path(fp32_path).resolve()
        q = _quantization_api()
        # ORT's symbolic shape inference saves large models to the current folder
        # (sym_shape_infer_temp.onnx + uuid.data files): keep them in the work folder.
        with _quiet(), _working_directory(self.workdir):
            # Shape inference and ORT's basic graph optimisations (constant folding, Conv+BN fusion).
            try:
                q.shape_inference.quant_pre_process(str(fp32_path), str(self.prepared))
            except Exception:  # ORT's symbolic shape inference gives up on some dynamic-size graphs
                q.shape_inference.quant_pre_process(str(fp32_path), str(self.prepared), skip_symbolic_shape=True)
        onnx.save(name_nodes(onnx.load(str(self.prepared))), str(self.prepared))
        self._builds = 0

    @property
    def _calibrate_method(self):
        q = _quantization_api()
        methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                   "percentile": q.CalibrationMethod.Percentile}
        return methods[self.method]

    def candidates(self) -> list[tuple[str, str]]:
        """(node name, op type) of the weighted layers: the ones sensitivity analysis may keep in float."""
        return weighted_layers(onnx.load(str(self.prepared), load_external_data=False))

    def calibrate(self, images: ImageSet, spec: dict, input_name: str, batch: int, progress=None) -> None:
        """Collect activation ranges over ``images`` and save them to ``calibration_cache``."""
        q = _quantization_api()
        options = {"symmetric": self.scheme.activation_symmetric}
        if self.method == "percentile":
            options["percentile"] = self.percentile
        with tempfile.TemporaryDirectory(prefix="segdeploy-calib-") as tmp, _quiet():
            calibrator = q.create_calibrator(
                self.prepared, list(self.scheme.op_types or []) or None,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=self._calibrate_method, extra_options=options,
            )  # fmt: skip
            fixed_batch = self._fixed_batch(input_name)
            for x in images.batches(spec, batch):
                if len(x) < batch and fixed_batch:
                    break  # a fixed-batch graph cannot take the remainder
                # One batch per call: histograms and ranges accumulate, activations do not pile up.
                calibrator.collect_data(_OneBatch({input_name: x}))
                if progress:
                    progress(len(x))
            ranges = calibrator.compute_data()
            del calibrator
        q.calibrate.save_tensors_data(ranges, self.calibration_cache)

    def _fixed_batch(self, input_name: str) -> bool:
        model = onnx.load(str(self.prepared), load_external_data=False)
        dim = next(i for i in model.graph.input if i.name == input_name).type.tensor_type.shape.dim[0]
        return dim.HasField("dim_value")

    def build(self, keep_float: frozenset[str] = frozenset()) -> Path:
        """A Q/DQ model with the nodes ``keep_float`` left unquantized, from the saved ranges."""
        if not self.calibration_cache.is_file():
            raise RuntimeError("calibrate() before build()")
        q = _quantization_api()
        scheme = self.scheme
        extra = {
            "ActivationSymmetric": scheme.activation_symmetric,
            "WeightSymmetric": True,
            "QuantizeBias": scheme.quantize_bias,
        }
        if scheme.route == "tensorrt":
            # Q/DQ on weighted layers' inputs only: TensorRT fuses Conv(+ReLU) with the next layer's Q.
            extra["OpTypesToExcludeOutputQuantization"] = list(scheme.op_types)
            extra["QDQOpTypePerChannelSupportToAxis"] = dict(WEIGHT_CHANNEL_AXIS)
        self._builds += 1
        output = self.workdir / f"int8-{self._builds}.onnx"
        with _quiet():
            q.quantize_static(
                str(self.prepared), str(output), calibration_data_reader=None,
                quant_format=q.QuantFormat.QDQ, op_types_to_quantize=list(scheme.op_types) if scheme.op_types else None,
                per_channel=True, reduce_range=False,
                activation_type=q.QuantType.QInt8 if scheme.activations == "int8" else q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8, nodes_to_exclude=sorted(keep_float),
                calibrate_method=self._calibrate_method, extra_options=extra,
                calibration_cache_path=str(self.calibration_cache),
            )  # fmt: skip
        if scheme.route == "tensorrt":
            problems = tensorrt_qdq_violations(output)
            if problems:
                raise VerificationError("the Q/DQ graph breaks TensorRT's rules: " + "; ".join(problems[:5]))
        return output


def tensorrt_qdq_violations(model: Path | onnx.ModelProto) -> list[str]:
    """What in a Q/DQ graph (a path or a loaded model) TensorRT rejects or mis-handles, as
    ``"node name: problem"`` strings; empty when it follows the rules.

    Checked: every zero point is 0 (symmetric), Q/DQ are int8, no INT32 DequantizeLinear (a
    quantized bias), and weights of Conv/ConvTranspose are quantized per channel on the
    output-channel axis.
    """
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model)
    constants = {i.name: i for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero_point = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero_point is None:
            problems.append(f"{node.name}: no constant zero point")
            continue
        if zero_point.data_type != onnx.TensorProto.INT8:
            problems.append(f"{node.name}: {onnx.TensorProto.DataType.Name(zero_point.data_type)} zero point, not INT8")
        if np.any(numpy_helper.to_array(zero_point) != 0):
            problems.append(f"{node.name}: non-zero zero point (asymmetric)")
        if node.op_type == "DequantizeLinear" and node.input[0] in constants:
            if constants[node.input[0]].data_type == onnx.TensorProto.INT32:
                problems.append(f"{node.name}: INT32 DequantizeLinear (quantized bias)")
    consumers = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    for node in model.graph.node:
        if node.op_type not in WEIGHT_CHANNEL_AXIS or len(node.input) < 2:
            continue
        dequantize = producers.get(node.input[1])
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue  # a layer kept in float
        scale = constants.get(dequantize.input[1])
        axis = next((a.i for a in dequantize.attribute if a.name == "axis"), 1)
        weight = constants.get(dequantize.input[0])
        channels = numpy_helper.to_array(weight).shape[WEIGHT_CHANNEL_AXIS[node.op_type]] if weight is not None else None
        if scale is None or len(scale.dims) != 1 or axis != WEIGHT_CHANNEL_AXIS[node.op_type] or (channels and scale.dims[0] != channels):
            problems.append(f"{node.name}: weights not per-channel on axis {WEIGHT_CHANNEL_AXIS[node.op_type]}")
    return problems


class _OneBatch:
    """A CalibrationDataReader over a single feed."""

    def __init__(self, feed: dict):
        self._feed = feed

    def get_next(self):
        feed, self._feed = self._feed, None
        return feed


@contextlib.contextmanager
def _quiet():
    # ONNX Runtime's calibrators print chatter on stdout, which belongs to --json output.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield
