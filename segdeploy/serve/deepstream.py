"""A DeepStream ``nvinfer`` configuration for an artifact, every key of its ``[property]`` group from the manifest.

``write_deepstream_config(artifact, out)`` writes a folder DeepStream loads as is:

    OUT/config_infer_segdeploy.txt   the nvinfer config (network-type=2: semantic segmentation)
    OUT/model.onnx                   the artifact's model (nvinfer builds its TensorRT engine from it)
    OUT/labels.txt                   class names, one a line, in the order of nvinfer's class ids
    OUT/model.engine                 only with ``engine=``: an engine `segdeploy build` made on the device

Two things nvinfer does differently from segdeploy, and what is done about them:

- Normalisation. nvinfer computes ``y = net-scale-factor * (x - offsets[c])`` on 0..255 pixels, with
  one scale factor for every channel; the manifest's is ``(x * scale - mean[c]) / std[c]``. So
  ``offsets[c] = mean[c] / scale`` exactly, and ``net-scale-factor = scale / std`` is exact only when
  the std is the same in every channel. When it differs (ImageNet's 0.229, 0.224, 0.225) the config
  is refused unless the caller accepts an approximation: the single factor that minimises the
  largest error over channels and pixel values, reported with that error (``NormalisationFit``).
- Reading the output. nvinfer's segmentation parser (nvdsinfer ``fillSegmentationOutput``) reads
  the first output layer as float32 scores (C, H, W) and, per pixel, keeps the best class whose score
  is above both -1 (its starting best score) and ``segmentation-threshold``; a pixel with none stays
  unlabelled (-1). Hence, by deployment head (``outputs.Head.name``):
    * ``probabilities`` (softmax): threshold 0.0 - a softmax maximum is at least 1/C > 0, so every
      pixel gets the argmax, the first maximum on ties, as segdeploy's argmax;
    * binary (one channel, sigmoid probability or logit): the manifest's threshold (>= 0), class 0 is
      the foreground and -1 the background (segdeploy's 1 and 0);
    * multi-class ``logits``: refused - a pixel whose logits are all <= -1 stays unlabelled whatever the
      threshold; ``segdeploy head ARTIFACT --head probabilities`` gives the same labels with softmax in the graph;
    * ``labels``: refused - the parser reads per-class float scores, not class ids.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInputError
from ..manifest import MANIFEST_NAME
from ..onnx_io import elem_type, open_artifact, static_dims
from ..outputs import Head

CONFIG_NAME = "config_infer_segdeploy.txt"
LABELS_NAME = "labels.txt"
#: network-mode: 0 FP32, 1 INT8, 2 FP16.
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
#: model-color-format: 0 RGB, 1 BGR, 2 GRAY.
COLOR_FORMATS = {"RGB": 0, "BGR": 1, "GRAY": 2}
#: scaling-filter (NvBufSurfTransform_Inter): 0 nearest, 1 bilinear.
SCALING_FILTERS = {"nearest": 0, "bilinear": 1}
#: The best score nvinfer's segmentation parser starts each pixel with: scores at or below it never win.
PARSER_START_SCORE = -1.0
#: Relative spread of scale/std below which one net-scale-factor is exact (float32 rounding).
EXACT_RTOL = 1e-6
_ONNX_FLOAT = 1  # onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class NormalisationFit:
    """nvinfer's ``net-scale-factor`` and ``offsets`` for a manifest's normalisation."""

    net_scale_factor: float
    offsets: tuple[float, ...]
    #: Largest |nvinfer's input - the manifest's| over channels and pixel values 0..255 (0 when exact).
    max_error: float
    exact: bool

    @property
    def max_error_levels(self) -> float:
        """The largest error in 8-bit pixel levels (the same error as a shift of the pixel value)."""
        return self.max_error / self.net_scale_factor


def fit_normalisation(spec: dict) -> NormalisationFit:
    """Offsets ``mean / scale`` and the one scale factor closest to ``scale / std`` in every channel.

    With per-channel factors ``t[c]`` the error of a factor ``k`` at pixel value ``x`` is
    ``|t[c] - k| * |x - offsets[c]|``, largest at x = 0 or 255; ``k`` minimises the largest of these
    over channels (a minimax of lines: the optimum is where two of them cross, or at one ``t[c]``).
    """
    scale = float(spec["scale"])
    offsets = tuple(float(m) / scale for m in spec["mean"])
    targets = [scale / float(s) for s in spec["std"]]
    weights = [max(o, 255.0 - o) for o in offsets]
    if max(targets) - min(targets) <= EXACT_RTOL * max(targets):
        return NormalisationFit(targets[0], offsets, 0.0, True)

    def worst(k: float) -> float:
        return max(w * abs(t - k) for t, w in zip(targets, weights))

    candidates = list(targets) + [(wi * ti + wj * tj) / (wi + wj) for i, (ti, wi) in enumerate(zip(targets, weights))
                                  for tj, wj in list(zip(targets, weights))[i + 1:]]
    best = min(candidates, key=worst)
    return NormalisationFit(best, offsets, worst(best), False)


def segmentation_threshold(head: Head, where: str) -> float:
    """The ``segmentation-threshold`` under which nvinfer's labels are segdeploy's, or a BadInputError saying why none is."""
    advice = ("give it a probabilities head (softmax in the graph: the same labels, scores nvinfer can read): "
              f"`segdeploy head {Path(where).parent} --head probabilities`, or export with --head probabilities")
    if head.name == "labels":
        raise BadInputError(f"{where}: the model outputs class ids (deployment head 'labels'), but nvinfer's segmentation "
                            f"parser reads per-class float scores (C, H, W) and takes their best; {advice}")
    if head.kind == "binary":
        if head.threshold < 0:
            raise BadInputError(f"{where}: binary threshold {head.threshold:g} is negative; nvinfer's parser keeps a "
                                f"score only above {PARSER_START_SCORE:g} and DeepStream rejects negative segmentation "
                                f"thresholds; {advice}")
        return float(head.threshold)
    if head.name == "logits":
        raise BadInputError(f"{where}: the model outputs logits; nvinfer's segmentation parser keeps a class only when its "
                            f"score is above {PARSER_START_SCORE:g} (its starting best score) and segmentation-threshold, "
                            f"so a pixel whose logits are all <= {PARSER_START_SCORE:g} would stay unlabelled whatever "
                            f"the threshold; {advice}")
    return 0.0  # softmax: the best score of a pixel is >= 1/C > 0


@dataclass
class DeepStreamConfig:
    """What ``write_deepstream_config`` wrote, and what the user should know about it."""

    folder: Path
    config: Path
    properties: dict[str, str]
    normalisation: NormalisationFit
    notes: list[str] = field(default_factory=list)


def nvinfer_properties(artifact, *, batch_size: int = 1, gpu_id: int = 0, gie_unique_id: int = 1,
                       input_size: tuple[int, int] | None = None, approximate_std: bool = False,
                       engine: str | None = None,
                       output_tensor_meta: bool = False) -> tuple[dict[str, str], NormalisationFit, list[str]]:  # fmt: skip
    """The ``[property]`` group for ``artifact`` (folder or ONNX file with a manifest), checked; also the
    normalisation fit and notes for the user. Every refusal is a BadInputError naming the file."""
    art = open_artifact(artifact)
    if art.manifest is None:
        raise BadInputError(f"{art.onnx_path}: no {MANIFEST_NAME} beside it, so its normalisation and classes are unknown; "
                            "record them with `segdeploy adopt` first")
    where = str(art.onnx_path.parent / MANIFEST_NAME)
    manifest, spec = art.manifest, art.manifest["input"]
    color = spec.get("color", "RGB")
    if color not in COLOR_FORMATS:
        raise BadInputError(f"{where}: input color {color!r}: nvinfer feeds video frames as RGB, BGR or GRAY pictures")
    if spec.get("normalisation_known") is False:
        raise BadInputError(f"{where}: the input normalisation is unknown; record it with `segdeploy adopt --mean ... --std ...`")
    dims = static_dims(art.image_input())
    channels = {"GRAY": 1}.get(color, 3)
    if dims[1] not in (None, channels):
        raise BadInputError(f"{art.onnx_path}: input has {dims[1]} channels, but color {color} gives {channels}")
    if dims[0] is not None and dims[0] != batch_size:
        raise BadInputError(f"{art.onnx_path}: input has a fixed batch of {dims[0]}; batch-size {batch_size} cannot be "
                            f"fed to it (use batch size {dims[0]})")
    height, width = input_size or tuple(spec.get("size") or (None, None))
    if height is None or width is None:
        raise BadInputError(f"{where}: no input size recorded; give the network's height and width (--input-size H W)")
    for fixed, given in zip(dims[2:], (height, width)):
        if fixed is not None and fixed != given:
            raise BadInputError(f"{art.onnx_path}: input is fixed at {dims[2]}x{dims[3]}; {height}x{width} cannot be fed to it")
    multiple = int(spec.get("size_multiple") or 1)
    if height % multiple or width % multiple:
        raise BadInputError(f"{where}: input size {height}x{width} is not a multiple of {multiple}, as the model needs")

    head = Head.from_manifest(manifest)
    threshold = segmentation_threshold(head, where)
    output = manifest["output"]
    graph_outputs = list(art.model.graph.output)
    if graph_outputs[0].name != output["name"]:
        raise BadInputError(f"{art.onnx_path}: the prediction output {output['name']!r} is not the graph's first output "
                            f"({graph_outputs[0].name!r}); nvinfer's parser reads the first one: drop the side outputs "
                            "(--drop-side-outputs)")
    if elem_type(graph_outputs[0]) != _ONNX_FLOAT:
        raise BadInputError(f"{art.onnx_path}: output {output['name']!r} is not float32; nvinfer's parser reads float32 scores")
    classes = 1 if head.kind == "binary" else len(manifest["classes"])

    fit = fit_normalisation(spec)
    notes = []
    if not fit.exact:
        stds = ", ".join(f"{s:g}" for s in spec["std"])
        summary = (f"the std differs per channel ({stds}) and nvinfer has one net-scale-factor: the closest, "
                   f"{fit.net_scale_factor:.9g}, is off by up to {fit.max_error:.4f} on the normalised input "
                   f"({fit.max_error_levels:.2f} pixel levels of 255)")
        if not approximate_std:
            raise BadInputError(f"{where}: {summary}; accept it with --approximate-std")
        notes.append(f"normalisation approximated: {summary}")

    precision = manifest.get("onnx", {}).get("precision", "fp32")
    mode = NETWORK_MODES[precision]
    properties = {
        "gpu-id": str(gpu_id),
        "gie-unique-id": str(gie_unique_id),
        "process-mode": "1",  # primary: the full frame
        "network-type": "2",  # semantic segmentation
        "onnx-file": art.onnx_path.name,
        "labelfile-path": LABELS_NAME,
        "batch-size": str(batch_size),
        "network-mode": str(mode),
        "infer-dims": f"{channels};{height};{width}",
        "network-input-order": "0",  # NCHW
        "model-color-format": str(COLOR_FORMATS[color]),
        "net-scale-factor": f"{fit.net_scale_factor:.9g}",
        "offsets": ";".join(f"{o:.9g}" for o in fit.offsets),
        # segdeploy resizes the whole frame to the network size (no letterbox), bilinear.
        "maintain-aspect-ratio": "0",
        "scaling-filter": str(SCALING_FILTERS.get(spec.get("resize", "bilinear"), 1)),
        "output-blob-names": output["name"],
        "segmentation-output-order": "0",  # NCHW
        "num-detected-classes": str(classes),
        "segmentation-threshold": f"{threshold:g}",
        "output-tensor-meta": "1" if output_tensor_meta else "0",
        "interval": "0",
    }
    if engine is not None:
        properties["model-engine-file"] = _checked_engine(engine, precision, batch_size, (channels, height, width)).name
    else:
        # The name nvinfer gives the engine it builds from onnx-file: the second start loads it.
        properties["model-engine-file"] = f"{art.onnx_path.name}_b{batch_size}_gpu{gpu_id}_{precision}.engine"
        if precision == "int8":
            notes.append("INT8: nvinfer builds an engine from ONNX with the INT8 flag only when given a calibration "
                         "file, and otherwise falls back to FP16 flags; the scales are in this graph (Q/DQ), so build "
                         "the engine on the device with `segdeploy build` and pass it with --engine")
    return properties, fit, notes


def _checked_engine(engine, precision: str, batch_size: int, chw: tuple[int, int, int]) -> Path:
    """An engine `segdeploy build` wrote (engine.json beside it) that nvinfer can run at this config's shape."""
    from ..backend.trt.engine_json import resolve_engine

    engine_path, record = resolve_engine(engine)
    if record.get("precision") != precision:
        raise BadInputError(f"{engine_path}: a {record.get('precision')} engine for a {precision} artifact")
    for profile in record["profiles"]:
        for shapes in profile.values():
            low, high = shapes["min"], shapes["max"]
            if len(low) == 4 and (tuple(low[1:]) != chw or tuple(high[1:]) != chw or not low[0] <= batch_size <= high[0]):
                raise BadInputError(f"{engine_path}: profile {low}..{high} does not hold batch {batch_size} at exactly "
                                    f"{'x'.join(map(str, chw))} (nvinfer runs one shape); build it with `segdeploy build "
                                    f"--batch {batch_size} --min {chw[1]}x{chw[2]} --opt {chw[1]}x{chw[2]} "
                                    f"--max {chw[1]}x{chw[2]}`")
    return engine_path


def render_config(properties: dict[str, str], notes: list[str], source: str) -> str:
    """The config file's text: a comment of provenance and notes, then ``[property]``."""
    lines = [f"# DeepStream nvinfer config written by segdeploy from {source}",
             "# y = net-scale-factor * (x - offsets[c]) on 0..255 pixels reproduces the manifest's normalisation;",
             "# segmentation-threshold is chosen so that nvinfer's labels are segdeploy's argmax (see segdeploy.serve.deepstream)."]
    lines += [f"# note: {note}" for note in notes]
    lines.append("[property]")
    lines += [f"{key}={value}" for key, value in properties.items()]
    return "\n".join(lines) + "\n"


def label_lines(manifest: dict) -> list[str]:
    """Class names in nvinfer's class-id order: binary heads have one class, the foreground (id 0)."""
    classes = list(manifest["classes"])
    if Head.from_manifest(manifest).kind == "binary":
        return [classes[-1] if len(classes) > 1 else "foreground"]
    return classes


def write_deepstream_config(artifact, out, **options) -> DeepStreamConfig:
    """Write ``out`` (a new folder: config, model, labels, engine if given) for DeepStream; see ``nvinfer_properties``
    for ``options``. Nothing is left at ``out`` when a check fails."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out}: already exists; give a new folder")
    properties, fit, notes = nvinfer_properties(artifact, **options)
    art = open_artifact(artifact)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the folder from the DeepStream user
    try:
        _link_or_copy(art.onnx_path, staging / properties["onnx-file"])
        if options.get("engine") is not None:
            from ..backend.trt.engine_json import resolve_engine

            _link_or_copy(resolve_engine(options["engine"])[0], staging / properties["model-engine-file"])
        (staging / LABELS_NAME).write_text("\n".join(label_lines(art.manifest)) + "\n")
        (staging / CONFIG_NAME).write_text(render_config(properties, notes, str(artifact)))
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return DeepStreamConfig(out, out / CONFIG_NAME, properties, fit, notes)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the filesystem allows (models are large), else a copy."""
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)
