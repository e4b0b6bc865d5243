"""A Triton Inference Server model repository from segdeploy artifacts, validated before it is written.

API (stable; ``segdeploy serve triton`` and the tests use it)::

    from segdeploy.serve.triton import TritonOptions, write_repository
    repo = write_repository(["artifacts/dlv3p"], "models", TritonOptions(max_batch_size=8))
    repo.path                   # Path of the repository
    served = repo.models[0]     # one ServedModel per artifact:
    served.model                # the model step ("dlv3p"): the network itself, float32 NCHW in, scores out
    served.ensemble             # "dlv3p_segment": image in, labels out (None with pipeline=False)
    served.preprocess, served.postprocess      # its Python-backend steps
    served.model_input, served.model_output    # the network's tensor names ("images", "logits")
    served.max_batch_size, served.step, served.manifest

Per artifact NAME the repository holds (``ServedModel`` names them)::

    NAME/               the network: platform "onnxruntime_onnx" (1/model.onnx), "tensorrt_plan"
                        (1/model.plan, or one plan per compute capability via cc_model_filenames),
                        or backend "python" running ONNX Runtime inside (1/model.py + model.onnx)
    NAME_preprocess/    Python backend: IMAGE_BYTES (an encoded image, TYPE_STRING [1]) or RGB
                        (uint8 [H, W, 3]) -> the network's input, exactly as ``segdeploy infer``
                        prepares it (segdeploy.preprocess), and ORIGINAL_SIZE (int32 [2])
    NAME_postprocess/   Python backend: the network's output -> LABELS (uint8 [H, W], at the
                        image's own size; the manifest's Head reads it) [+ PROBABILITIES (float32 [C, H, W])]
    NAME_segment/       the ensemble: preprocess -> NAME -> postprocess

A graph ending in segdeploy's dense CRF (manifest ``crf``) also takes the resized picture, which
the preprocess step hands it; graphs with segdeploy's own nodes run only in the python model step.

The Python-backend models are one-line ``model.py`` files importing ``segdeploy.serve.triton_steps``:
the server's Python stub must see the environment segdeploy is installed in (``segdeploy serve
start`` and ``segdeploy.serve.server.server_environment`` set PYTHONPATH and LD_LIBRARY_PATH).

Everything is checked before a byte is written (names, dims, batch sizes, dtypes, the ensemble's
wiring, the files each model needs, and, when tritonclient is installed, each config parsed by
Triton's own ``ModelConfig`` message); the repository is written into a temporary folder beside
``repo_dir`` and renamed into place, so a bad artifact leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..errors import BadInputError
from ..fileio import write_json
from ..manifest import MANIFEST_NAME
from ..onnx_io import ONNX_DOMAINS, elem_type, graph_inputs, open_artifact, tensor_dims
from ..outputs import Head
from ..preprocess import input_channels, takes_pictures
from .pbtxt import Enum, render

MODEL_STEPS = ("onnxruntime", "tensorrt", "python")
DEVICES = ("cpu", "gpu")
TRT_PRECISIONS = ("FP32", "FP16", "INT8")
CONFIG_NAME = "config.pbtxt"
VERSION = "1"

#: The ensemble's and the pre/post steps' tensors.
IMAGE_BYTES = "IMAGE_BYTES"
RGB = "RGB"
ORIGINAL_SIZE = "ORIGINAL_SIZE"
LABELS = "LABELS"
PROBABILITIES = "PROBABILITIES"
#: The module whose classes the generated model.py files serve (see triton_steps.py).
STEPS_MODULE = "segdeploy.serve.triton_steps"

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ONNX_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.UINT16: "TYPE_UINT16", onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.BFLOAT16: "TYPE_BF16",
}  # fmt: skip
_NUMPY_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8",
                "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "bfloat16": "TYPE_BF16"}  # fmt: skip


@dataclass(frozen=True)
class TritonOptions:
    """How the repository is written; None means "from the artifact's manifest" (or the default below)."""

    #: One name per artifact (default: the artifact folder's name, or the ONNX file's stem).
    names: tuple[str, ...] = ()
    #: "onnxruntime" (Triton's ONNX Runtime backend), "tensorrt" (a ``segdeploy build`` engine) or
    #: "python" (ONNX Runtime inside Triton's Python backend: servers with only that backend).
    model_step: str = "onnxruntime"
    #: Largest batch the dynamic batcher forms (0: no batching; the graph's batch then fixed). Default 8,
    #: capped by the engine profile's largest batch.
    max_batch_size: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    queue_delay_us: int = 500
    #: Instances of the model step (and of each Python pre/post step).
    instances: int = 1
    #: "cpu" or "gpu" (KIND_CPU / KIND_GPU). Default: gpu for TensorRT, else cpu.
    device: str | None = None
    #: ONNX Runtime on a GPU: run through the TensorRT execution accelerator (default: yes on gpu).
    trt_accelerator: bool | None = None
    #: Its precision: FP32, FP16 or INT8 (default: the artifact's precision).
    trt_precision: str | None = None
    #: ONNX Runtime's threads per instance (0: its default).
    threads: int = 0
    #: Engine folders (``segdeploy build`` output: model.engine + engine.json) for the tensorrt step;
    #: default: the artifact folder's own engine. Several: one per compute capability.
    engines: tuple[str, ...] = ()
    #: Also return per-class probabilities at the image's size from the ensemble.
    probabilities: bool = False
    #: Write the pre/post steps and the ensemble (False: the network only).
    pipeline: bool = True
    #: Replace an existing repository folder.
    overwrite: bool = False


@dataclass
class TensorSpec:
    name: str
    data_type: str  # TYPE_FP32, ...
    dims: list[int]  # without the batch dimension when the model batches; -1 where dynamic

    def to_config(self, optional: bool = False) -> dict:
        entry = {"name": self.name, "data_type": Enum(self.data_type), "dims": list(self.dims)}
        if optional:
            entry["optional"] = True
        return entry


@dataclass
class ServedModel:
    """One artifact's models in the repository."""

    artifact: Path
    model: str
    step: str
    max_batch_size: int
    model_input: str
    model_output: str
    manifest: dict
    preprocess: str | None = None
    postprocess: str | None = None
    ensemble: str | None = None
    #: model name -> rendered config.pbtxt
    configs: dict[str, str] = field(default_factory=dict)
    #: What the server needs beyond the repository (a TensorRT plugin library).
    notes: list[str] = field(default_factory=list)


@dataclass
class Repository:
    path: Path
    models: list[ServedModel]

    def model_names(self) -> list[str]:
        return [name for served in self.models for name in served.configs]


@dataclass
class _ModelFolder:
    """What one model folder will hold: its config and the files of its version folder."""

    name: str
    config: dict
    files: dict[str, Path | bytes | dict]  # name in 1/ -> source file, bytes, or a JSON document


def write_repository(artifacts, repo_dir, options: TritonOptions = TritonOptions()) -> Repository:
    """Plan, validate and atomically write a Triton model repository for ``artifacts`` into ``repo_dir``."""
    repo_dir = Path(repo_dir)
    _check_options(options, len(artifacts))
    if not artifacts:
        raise BadInputError("no artifact given: name at least one artifact folder or ONNX file")
    names = list(options.names) or [default_model_name(a) for a in artifacts]
    served, folders = [], []
    for artifact, name in zip(artifacts, names):
        model, model_folders = plan_artifact(Path(artifact), name, options)
        served.append(model)
        folders.extend(model_folders)
    _check_unique([f.name for f in folders])
    validate(folders)
    rendered = {f.name: render(f.config) for f in folders}
    _parse_with_triton(rendered)
    for model in served:
        model.configs = {n: rendered[n] for n in rendered if n in _names_of(model)}
    _write_atomically(repo_dir, folders, rendered, options.overwrite)
    return Repository(repo_dir, served)


def _names_of(model: ServedModel) -> list[str]:
    return [n for n in (model.model, model.preprocess, model.postprocess, model.ensemble) if n]


def default_model_name(artifact) -> str:
    path = Path(artifact)
    stem = path.name if path.is_dir() else path.stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "model"


def _check_options(options: TritonOptions, count: int) -> None:
    if options.model_step not in MODEL_STEPS:
        raise BadInputError(f"model step {options.model_step!r}: expected one of {', '.join(MODEL_STEPS)}")
    if options.device is not None and options.device not in DEVICES:
        raise BadInputError(f"device {options.device!r}: expected cpu or gpu")
    if options.model_step == "tensorrt" and options.device == "cpu":
        raise BadInputError("a TensorRT engine runs on a GPU only: drop --device cpu")
    if options.names and len(options.names) != count:
        raise BadInputError(f"{len(options.names)} name(s) for {count} artifact(s): give one --name per artifact")
    if options.max_batch_size is not None and options.max_batch_size < 0:
        raise BadInputError(f"max batch size {options.max_batch_size}: expected 0 (no batching) or more")
    if options.instances < 1:
        raise BadInputError(f"instances {options.instances}: expected at least 1")
    if options.queue_delay_us < 0:
        raise BadInputError(f"queue delay {options.queue_delay_us} µs: expected 0 or more")
    if options.trt_precision is not None and options.trt_precision.upper() not in TRT_PRECISIONS:
        raise BadInputError(f"TensorRT precision {options.trt_precision!r}: expected one of {', '.join(TRT_PRECISIONS)}")
    if options.engines and options.model_step != "tensorrt":
        raise BadInputError("engines are served by the tensorrt model step: add --model-step tensorrt")
    if options.engines and count != 1:
        raise BadInputError("--engine applies to one artifact: serve several artifacts' engines in separate runs")


# -- planning ------------------------------------------------------------------------------------


def plan_artifact(artifact: Path, name: str, options: TritonOptions) -> tuple[ServedModel, list[_ModelFolder]]:
    """The model folders of one artifact (not written yet)."""
    opened = open_artifact(artifact)
    manifest = opened.manifest
    if manifest is None:
        raise BadInputError(f"{artifact}: no manifest.json: serving needs the input normalisation and how to read the "
                            "output; record them once with `segdeploy adopt`")  # fmt: skip
    head = Head.from_manifest(manifest)
    if options.probabilities and not head.has_scores:
        raise BadInputError(f"{artifact}: the model outputs labels only, so there are no probabilities to serve; "
                            "drop --probabilities")  # fmt: skip
    inputs = {i.name: i for i in graph_inputs(opened.model)}
    outputs = {o.name: o for o in opened.model.graph.output}
    input_name, output_name = manifest["input"]["name"], manifest["output"]["name"]
    if input_name not in inputs:
        raise BadInputError(f"{opened.onnx_path}: the manifest's input {input_name!r} is not a graph input "
                            f"(inputs: {', '.join(inputs)})")  # fmt: skip
    if output_name not in outputs:
        raise BadInputError(f"{opened.onnx_path}: the manifest's output {output_name!r} is not a graph output "
                            f"(outputs: {', '.join(outputs)})")  # fmt: skip
    # A graph ending in the dense CRF also takes the picture itself (manifest "crf": image_input).
    expected = [input_name] + ([manifest["crf"]["image_input"]] if manifest.get("crf") else [])
    if sorted(inputs) != sorted(expected):
        raise BadInputError(f"{opened.onnx_path}: the graph takes {', '.join(inputs)}; the manifest describes "
                            f"{', '.join(expected)}, all the served pipeline can feed")  # fmt: skip
    custom = sorted({n.domain for n in opened.model.graph.node} - set(ONNX_DOMAINS) - {"com.microsoft"})
    if custom and options.model_step == "onnxruntime":
        raise BadInputError(f"{opened.onnx_path}: the graph has nodes of domain {', '.join(custom)} (segdeploy's dense CRF "
                            "or fused head), which only segdeploy's ONNX Runtime runs: use --model-step python")  # fmt: skip
    notes = []
    if custom and options.model_step == "tensorrt":
        notes.append(f"{name}: the engine holds segdeploy's TensorRT plugin; start the server with "
                     "--backend-config=tensorrt,plugins=<segdeploy/_lib/libsegdeploy_trt_plugin.so>")  # fmt: skip

    if options.model_step == "tensorrt":
        step = _tensorrt_step(artifact, opened.onnx_path, manifest, name, options)
    else:
        step = _onnx_step(opened, manifest, name, options, [inputs[n] for n in expected], outputs)
    served = ServedModel(artifact, name, options.model_step, step.config["max_batch_size"], input_name, output_name, manifest,
                         notes=notes)
    folders = [step]
    if options.pipeline:
        if not takes_pictures(manifest["input"]):
            raise BadInputError(f"{artifact}: the model takes tensors (.npy), not pictures: serve the network alone "
                                "(--no-pipeline) and send it normalised float32 NCHW")  # fmt: skip
        pre, post, ensemble = _pipeline(step, manifest, name, options, head)
        served.preprocess, served.postprocess, served.ensemble = pre.name, post.name, ensemble.name
        folders += [pre, post, ensemble]
    return served, folders


def _batch_and_dims(dims: list, max_batch_size: int | None, where: str) -> tuple[int, list[int]]:
    """(max_batch_size, dims without batch) of a tensor of graph dims ``dims`` (int, or a name/None where dynamic)."""
    if not dims:
        raise BadInputError(f"{where}: a scalar tensor; expected a batch dimension first")
    batch = dims[0]
    fixed_batch = isinstance(batch, int) and batch > 0
    if max_batch_size is None:
        max_batch_size = 0 if fixed_batch else 8
    if max_batch_size > 0 and fixed_batch:
        raise BadInputError(f"{where}: the graph's batch dimension is fixed at {batch}, so Triton cannot batch "
                            "requests: re-export with a dynamic batch, or give --max-batch-size 0")  # fmt: skip
    rest = dims[1:] if max_batch_size > 0 else dims
    return max_batch_size, [d if isinstance(d, int) and d > 0 else -1 for d in rest]


def _onnx_type(value_info, where: str) -> str:
    kind = _ONNX_TYPES.get(elem_type(value_info))
    if kind is None:
        raise BadInputError(f"{where}: tensor {value_info.name!r} has ONNX type "
                            f"{onnx.TensorProto.DataType.Name(elem_type(value_info))}, which Triton cannot serve")  # fmt: skip
    return kind


def _instance_group(options: TritonOptions, device: str) -> list[dict]:
    return [{"count": options.instances, "kind": Enum("KIND_GPU" if device == "gpu" else "KIND_CPU")}]


def _dynamic_batching(options: TritonOptions, max_batch_size: int) -> dict | None:
    if max_batch_size == 0:
        return None
    batching = {"max_queue_delay_microseconds": options.queue_delay_us}
    if options.preferred_batch_sizes:
        batching = {"preferred_batch_size": list(options.preferred_batch_sizes), **batching}
    return batching


def _onnx_step(opened, manifest: dict, name: str, options: TritonOptions, graph_tensors, outputs) -> _ModelFolder:
    where = str(opened.onnx_path)
    device = options.device or "cpu"
    batches = [_batch_and_dims(tensor_dims(i), options.max_batch_size, where) for i in graph_tensors]
    max_batch_size = min(batch for batch, _ in batches)
    config = {"name": name}
    if options.model_step == "python":
        config["backend"] = "python"
    else:
        config["platform"] = "onnxruntime_onnx"
    config["max_batch_size"] = max_batch_size
    config["input"] = [TensorSpec(i.name, _onnx_type(i, where), dims).to_config() for i, (_, dims) in zip(graph_tensors, batches)]
    config["output"] = []
    for output in outputs.values():
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in tensor_dims(output)]
        if output.name == manifest["output"]["name"] and len(dims) == 4 and dims[1] == -1:
            dims[1] = _score_channels(manifest)  # a symbolic class axis: the manifest knows its size
        config["output"].append(TensorSpec(output.name, _onnx_type(output, where), dims[1:] if max_batch_size > 0 else dims).to_config())
    config["dynamic_batching"] = _dynamic_batching(options, max_batch_size)
    config["instance_group"] = _instance_group(options, device)
    parameters = []
    if options.threads:
        key = "intra_op_thread_count" if options.model_step == "onnxruntime" else "threads"
        parameters.append({"key": key, "value": {"string_value": str(options.threads)}})
    if options.model_step == "onnxruntime" and device == "gpu" and options.trt_accelerator is not False:
        precision = (options.trt_precision or _precision(manifest)).upper()
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": [{"key": "precision_mode", "value": precision}]}]}}  # fmt: skip
    elif options.trt_accelerator:
        raise BadInputError("the TensorRT execution accelerator applies to the onnxruntime model step on a GPU: "
                            "add --device gpu (and --model-step onnxruntime)")  # fmt: skip
    if parameters:
        config["parameters"] = parameters
    files: dict = {"model.onnx": opened.onnx_path}
    _add_external_data(opened, files)
    if options.model_step == "python":
        files["model.py"] = _model_py("OnnxModel", "the network, run by ONNX Runtime inside the Python backend")
        files[MANIFEST_NAME] = manifest
    return _ModelFolder(name, config, files)


def _score_channels(manifest: dict) -> int:
    """The channels of a scores output (N, C, H, W): one for a binary head, one per class else (-1: unknown)."""
    head = Head.from_manifest(manifest)
    if not head.has_scores:
        return -1
    if head.kind == "binary":
        return 1
    return len(manifest.get("classes") or []) or -1


def _add_external_data(opened, files: dict) -> None:
    """External weight files beside model.onnx travel with it (same relative names)."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    for tensor in opened.model.graph.initializer:
        if uses_external_data(tensor):
            location = ExternalDataInfo(tensor).location
            files[location] = opened.onnx_path.parent / location


def _precision(manifest: dict) -> str:
    return {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}.get((manifest.get("onnx") or {}).get("precision", "fp32"), "FP32")


def _tensorrt_step(artifact: Path, onnx_path: Path, manifest: dict, name: str, options: TritonOptions) -> _ModelFolder:
    from ..backend.trt.engine_json import check_engine, resolve_engine

    sources = [Path(e) for e in options.engines] or [artifact if artifact.is_dir() else artifact.parent]
    engines = []
    for source in sources:
        engine_path, record = resolve_engine(source)
        check_engine(record, engine_path, None)  # the file is the one engine.json describes
        engines.append((engine_path, record))
    io = engines[0][1]["io"]
    for engine_path, record in engines[1:]:
        if [(t["name"], t["dtype"]) for t in record["io"]] != [(t["name"], t["dtype"]) for t in io]:
            raise BadInputError(f"{engine_path}: its inputs and outputs differ from {engines[0][0]}'s; several engines "
                                "must be builds of one model")  # fmt: skip
    capabilities = [(record.get("gpu") or {}).get("compute_capability") for _, record in engines]
    if len(engines) > 1:
        if None in capabilities:
            raise BadInputError(f"{engines[capabilities.index(None)][0]}: engine.json records no GPU compute capability")
        if len(set(capabilities)) != len(capabilities):
            raise BadInputError(f"two engines for compute capability {_duplicate(capabilities)}: give one per GPU kind")
    input_entry = next((t for t in io if t["mode"] == "input" and t["name"] == manifest["input"]["name"]), None)
    if input_entry is None:
        raise BadInputError(f"{engines[0][0]}: the engine has no input {manifest['input']['name']!r}")
    profile_max = min(_profile_max_batch(record, input_entry["name"]) for _, record in engines)
    graph_dims = [d if d > 0 else None for d in input_entry["shape"]]
    default_batch = min(8, profile_max or 8) if graph_dims[0] is None else 0
    max_batch_size, _ = _batch_and_dims(graph_dims, options.max_batch_size if options.max_batch_size is not None
                                        else default_batch, str(engines[0][0]))  # fmt: skip
    if profile_max and max_batch_size > profile_max:
        raise BadInputError(f"{engines[0][0]}: max batch size {max_batch_size} exceeds the engine profile's largest "
                            f"batch {profile_max}; rebuild with `segdeploy build --batch 1:{max_batch_size // 2 or 1}:"
                            f"{max_batch_size}` or lower --max-batch-size")  # fmt: skip

    def spec(entry) -> dict:
        kind = _NUMPY_TYPES.get(entry["dtype"])
        if kind is None:
            raise BadInputError(f"{engines[0][0]}: tensor {entry['name']!r} has type {entry['dtype']}, which Triton cannot serve")
        shape = entry["shape"][1:] if max_batch_size > 0 else entry["shape"]
        return TensorSpec(entry["name"], kind, [d if d > 0 else -1 for d in shape]).to_config()

    config = {"name": name, "platform": "tensorrt_plan", "max_batch_size": max_batch_size,
              "input": [spec(t) for t in io if t["mode"] == "input"],
              "output": [spec(t) for t in io if t["mode"] == "output"],
              "dynamic_batching": _dynamic_batching(options, max_batch_size),
              "instance_group": _instance_group(options, "gpu")}  # fmt: skip
    if len(engines) == 1:
        files = {"model.plan": engines[0][0]}
    else:
        files = {f"model_sm{cc.replace('.', '')}.plan": path for (path, _), cc in zip(engines, capabilities)}
        config["cc_model_filenames"] = [{"key": cc, "value": f"model_sm{cc.replace('.', '')}.plan"} for cc in capabilities]
    return _ModelFolder(name, config, files)


def _duplicate(values: list) -> str:
    return next(v for v in values if values.count(v) > 1)


def _profile_max_batch(record: dict, input_name: str) -> int:
    """The largest batch every optimization profile of the engine takes (0 when unrecorded)."""
    batches = [profile[input_name]["max"][0] for profile in record.get("profiles") or [] if input_name in profile]
    return min(batches) if batches else 0


def _model_py(class_name: str, what: str) -> bytes:
    return (f'"""segdeploy: {what} (written by `segdeploy serve triton`).\n\n'
            "The server's Python must import segdeploy: see `segdeploy serve triton --help`.\n"
            '"""\n\nimport os\nimport sys\n\n'
            "# Triton's Python stub starts an isolated interpreter, which ignores PYTHONPATH: honour it here, so\n"
            "# that the server's environment says where segdeploy is installed (segdeploy serve start sets it).\n"
            'sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]\n\n'
            f"from {STEPS_MODULE} import {class_name} as TritonPythonModel  # noqa: E402, F401\n").encode()  # fmt: skip


def _pipeline(step: _ModelFolder, manifest: dict, name: str, options: TritonOptions, head: Head):
    """The preprocess and postprocess Python models and the ensemble around the model step ``step``."""
    batch = step.config["max_batch_size"]
    # A model step without batching takes a batch of one; the steps around it batch one at a time.
    outer_batch = batch or 1
    model_in = next(i for i in step.config["input"] if i["name"] == manifest["input"]["name"])
    crf_input = (manifest.get("crf") or {}).get("image_input")
    model_out = next(o for o in step.config["output"] if o["name"] == manifest["output"]["name"])
    in_dims = model_in["dims"] if batch else model_in["dims"][1:]
    out_dims = model_out["dims"] if batch else model_out["dims"][1:]
    spec = manifest["input"]
    channels = input_channels(spec)
    if in_dims[0] not in (-1, channels):
        raise BadInputError(f"{name}: the network's input {model_in['name']!r} takes {in_dims[0]} channels and the "
                            f"manifest says {channels}")  # fmt: skip
    size = spec.get("size") or [None, None]
    net_dims = [channels] + [int(s) if s else -1 for s in size]
    for axis, (graph, ours) in enumerate(zip(in_dims[1:], net_dims[1:])):
        if graph != -1 and ours != -1 and graph != ours:
            raise BadInputError(f"{name}: the graph's input is {graph} pixels along axis {axis + 2} and the manifest's "
                                f"size {size} says {ours}")  # fmt: skip
    net_dims = [g if g != -1 else o for g, o in zip(in_dims, net_dims)]
    group = _instance_group(options, "cpu")
    pre_name, post_name, ensemble_name = f"{name}_preprocess", f"{name}_postprocess", f"{name}_segment"
    pre = _ModelFolder(pre_name, {
        "name": pre_name, "backend": "python", "max_batch_size": outer_batch,
        "input": [TensorSpec(IMAGE_BYTES, "TYPE_STRING", [1]).to_config(optional=True),
                  TensorSpec(RGB, "TYPE_UINT8", [-1, -1, 3]).to_config(optional=True)],
        "output": [TensorSpec(model_in["name"], str(model_in["data_type"]), net_dims).to_config(),
                   TensorSpec(ORIGINAL_SIZE, "TYPE_INT32", [2]).to_config()]
                  + ([TensorSpec(crf_input, "TYPE_UINT8", [*net_dims[1:], 3]).to_config()] if crf_input else []),
        "dynamic_batching": _dynamic_batching(options, outer_batch),
        "instance_group": group,
    }, {"model.py": _model_py("Preprocess", "encoded image or RGB -> the network's input, as segdeploy infer prepares it"),
        MANIFEST_NAME: manifest})  # fmt: skip
    classes = out_dims[0] if head.form == "scores" and out_dims else -1
    post_outputs = [TensorSpec(LABELS, "TYPE_UINT8", [-1, -1]).to_config()]
    if options.probabilities:
        post_outputs.append(TensorSpec(PROBABILITIES, "TYPE_FP32", [classes, -1, -1]).to_config())
    post = _ModelFolder(post_name, {
        "name": post_name, "backend": "python", "max_batch_size": outer_batch,
        "input": [TensorSpec(model_out["name"], str(model_out["data_type"]), out_dims).to_config(),
                  TensorSpec(ORIGINAL_SIZE, "TYPE_INT32", [2]).to_config()],
        "output": post_outputs,
        "dynamic_batching": _dynamic_batching(options, outer_batch),
        "instance_group": group,
    }, {"model.py": _model_py("Postprocess", "the network's output -> labels at the image's size (outputs.Head)"),
        MANIFEST_NAME: manifest})  # fmt: skip
    inner = {"input": f"_{model_in['name']}", "output": f"_{model_out['name']}", "size": "_original_size"}
    ensemble = _ModelFolder(ensemble_name, {
        "name": ensemble_name, "platform": "ensemble", "max_batch_size": outer_batch,
        "input": pre.config["input"],
        "output": post_outputs,
        "ensemble_scheduling": {"step": [
            {"model_name": pre_name, "model_version": -1,
             "input_map": [{"key": IMAGE_BYTES, "value": IMAGE_BYTES}, {"key": RGB, "value": RGB}],
             "output_map": [{"key": model_in["name"], "value": inner["input"]},
                            {"key": ORIGINAL_SIZE, "value": inner["size"]}]
                           + ([{"key": crf_input, "value": f"_{crf_input}"}] if crf_input else [])},
            {"model_name": name, "model_version": -1,
             "input_map": [{"key": model_in["name"], "value": inner["input"]}]
                          + ([{"key": crf_input, "value": f"_{crf_input}"}] if crf_input else []),
             "output_map": [{"key": model_out["name"], "value": inner["output"]}]},
            {"model_name": post_name, "model_version": -1,
             "input_map": [{"key": model_out["name"], "value": inner["output"]}, {"key": ORIGINAL_SIZE, "value": inner["size"]}],
             "output_map": [{"key": o["name"], "value": o["name"]} for o in post_outputs]},
        ]},
    }, {})  # fmt: skip
    return pre, post, ensemble


# -- validation ----------------------------------------------------------------------------------


def validate(folders: list[_ModelFolder]) -> None:
    """Names, batch sizes, dims, files and the ensembles' wiring, before anything is written."""
    by_name = {f.name: f for f in folders}
    for folder in folders:
        config, where = folder.config, f"model {folder.name!r}"
        if not _NAME.match(folder.name):
            raise BadInputError(f"{where}: a model name takes letters, digits, '_', '.' and '-' only")
        batch = config.get("max_batch_size", 0)
        if not isinstance(batch, int) or batch < 0:
            raise BadInputError(f"{where}: max_batch_size {batch!r}: expected an integer >= 0")
        preferred = ((config.get("dynamic_batching") or {}).get("preferred_batch_size")) or []
        if any(p < 1 or p > batch for p in preferred):
            raise BadInputError(f"{where}: preferred batch sizes {preferred} must lie in 1..max_batch_size ({batch})")
        for tensor in config.get("input", []) + config.get("output", []):
            if not _NAME.match(tensor["name"]) and not tensor["name"]:
                raise BadInputError(f"{where}: an unnamed tensor")
            dims = tensor["dims"]
            if not dims or any(not isinstance(d, int) or d == 0 or d < -1 for d in dims):
                raise BadInputError(f"{where}: tensor {tensor['name']!r} dims {dims}: expected positive sizes or -1")
        names = [t["name"] for t in config.get("input", [])] + [t["name"] for t in config.get("output", [])]
        if len(set(names)) != len(names):
            raise BadInputError(f"{where}: a tensor name appears twice ({', '.join(names)})")
        for file_name, source in folder.files.items():
            if isinstance(source, Path) and not source.is_file():
                raise BadInputError(f"{source}: missing; {where} needs it as {VERSION}/{file_name}")
        needs = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}.get(config.get("platform"))
        if config.get("backend") == "python":
            needs = "model.py"
        if needs and needs not in folder.files and not config.get("cc_model_filenames"):
            raise BadInputError(f"{where}: no {VERSION}/{needs}")
        if config.get("platform") == "ensemble":
            _validate_ensemble(folder, by_name)


def _validate_ensemble(folder: _ModelFolder, by_name: dict) -> None:
    where = f"ensemble {folder.name!r}"
    available = {t["name"]: t for t in folder.config["input"]}
    for step in folder.config["ensemble_scheduling"]["step"]:
        model = by_name.get(step["model_name"])
        if model is None:
            raise BadInputError(f"{where}: step model {step['model_name']!r} is not in the repository")
        if 0 < model.config["max_batch_size"] < folder.config["max_batch_size"]:
            raise BadInputError(f"{where}: max_batch_size {folder.config['max_batch_size']} exceeds step "
                                f"{model.name!r}'s {model.config['max_batch_size']}")  # fmt: skip
        inputs = {t["name"]: t for t in model.config["input"]}
        outputs = {t["name"]: t for t in model.config["output"]}
        for mapping in step["input_map"]:
            if mapping["key"] not in inputs:
                raise BadInputError(f"{where}: step {model.name!r} has no input {mapping['key']!r}")
            source = available.get(mapping["value"])
            if source is None:
                raise BadInputError(f"{where}: tensor {mapping['value']!r} is used before a step produces it")
            if str(source["data_type"]) != str(inputs[mapping["key"]]["data_type"]):
                raise BadInputError(f"{where}: {mapping['value']!r} is {source['data_type']} but step {model.name!r}'s "
                                    f"input {mapping['key']!r} takes {inputs[mapping['key']]['data_type']}")  # fmt: skip
        for mapping in step["output_map"]:
            if mapping["key"] not in outputs:
                raise BadInputError(f"{where}: step {model.name!r} has no output {mapping['key']!r}")
            available[mapping["value"]] = outputs[mapping["key"]]
    for output in folder.config["output"]:
        if output["name"] not in available:
            raise BadInputError(f"{where}: no step produces its output {output['name']!r}")


def _check_unique(names: list[str]) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise BadInputError(f"model name {name!r} twice in the repository: give each artifact its own --name")
        seen.add(name)


def _parse_with_triton(rendered: dict[str, str]) -> None:
    """Each config parsed by Triton's own ModelConfig message (tritonclient's copy), when installed."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return
    for name, text in rendered.items():
        try:
            text_format.Parse(text, model_config_pb2.ModelConfig())
        except text_format.ParseError as exc:  # a bug of ours, not the user's: say where
            raise ValueError(f"config of {name!r} is not a valid Triton ModelConfig: {exc}\n{text}") from None


# -- writing -------------------------------------------------------------------------------------


def _write_atomically(repo_dir: Path, folders: list[_ModelFolder], rendered: dict[str, str], overwrite: bool) -> None:
    if repo_dir.exists() and not (repo_dir.is_dir() and not any(repo_dir.iterdir())) and not overwrite:
        raise BadInputError(f"{repo_dir}: already exists and is not empty; give --overwrite to replace it")
    repo_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repo_dir.name}.", suffix=".tmp", dir=repo_dir.parent))
    try:
        for folder in folders:
            version = staging / folder.name / VERSION
            version.mkdir(parents=True)
            (staging / folder.name / CONFIG_NAME).write_text(rendered[folder.name])
            for file_name, source in folder.files.items():
                target = version / file_name
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(source, Path):
                    shutil.copyfile(source, target)
                elif isinstance(source, dict):
                    write_json(target, source)
                else:
                    target.write_bytes(source)
        old = None
        if repo_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{repo_dir.name}.old.", dir=repo_dir.parent))
            os.replace(repo_dir, old / "repo")
        os.replace(staging, repo_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
