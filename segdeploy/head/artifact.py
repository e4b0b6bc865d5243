"""A deployment head on an existing artifact (or a user's ONNX file), checked and written as a new artifact.

:func:`build_head` appends the head to a scores graph (``graph.append_head``), optionally fuses the
final Resize + ArgMax (``fuse``), and checks the result against the scores graph with ONNX Runtime at
two shapes: labels must agree with the host's argmax (or threshold) of the scores on at least
``min_agreement`` of the pixels, and the disagreeing pixels that are near-ties of the scores (two
classes within rounding of each other, which any other order of the same arithmetic may swap) are
counted; probabilities must be within the parity tolerance of the host's softmax. ``export`` calls it
on its freshly gated graph; :func:`apply_head` (``segdeploy head``) on any FP32, FP16 or INT8 artifact,
writing ``<artifact>_<head>`` with the parent's manifest, its ``output`` section for the new output
and a top-level ``head`` section saying how it was made.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..adopt import ModelOptions, artifact_manifest
from ..errors import BadInputError, VerificationError
from ..fileio import sha256_file, work_dir_beside
from ..lint import Finding, errors, lint_onnx, lint_report
from ..manifest import MANIFEST_NAME, ONNX_NAME, onnx_file_section, utc_timestamp, write_manifest
from ..onnx_io import default_opset, elem_type, image_input, load_onnx, tensor_dims
from ..outputs import HEAD_NAMES, Head
from ..parity import Thresholds, compare_outputs, parity_shapes, sample_feed
from ..targets import get_target
from .graph import OUTPUT_NAMES, append_head

#: Size multiple of the check's second shape when the manifest records no output stride.
DEFAULT_SIZE_MULTIPLE = 32
#: Check size of a graph with dynamic height and width whose manifest records no input size.
DEFAULT_CHECK_SIZE = (128, 128)
#: Two scores closer than this many units of rounding (of the precision the graph computes them in,
#: relative to their size) are a near-tie: another order of the same arithmetic may swap them.
NEAR_TIE_ULPS = 8


def _no_progress(message: str) -> None:
    pass


@dataclass(frozen=True)
class HeadParity:
    """The head graph's prediction against the scores graph's, read by the host, at one input shape."""

    shape: tuple[int, ...]
    output: str
    passed: bool
    #: Fraction of pixels whose label is the host's label of the scores.
    label_agreement: float
    disagreeing_pixels: int
    #: Of the disagreeing pixels, those whose two labels' scores are within rounding of each other.
    near_ties: int
    #: Probabilities heads: max |Δ| against the host's softmax/sigmoid, and the limit applied.
    max_abs_diff: float | None = None
    limit: float | None = None
    #: Side outputs (auxiliary heads) of the graph, unchanged by the head: their max |Δ| by name.
    side_outputs: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["shape"] = list(self.shape)
        return {k: v for k, v in data.items() if v is not None and v != {}}

    @classmethod
    def from_json(cls, data: dict) -> HeadParity:
        return cls(**{**data, "shape": tuple(data["shape"])})

    def describe(self) -> str:
        shape = "x".join(map(str, self.shape))
        text = (f"shape {shape} {self.output}: label agreement {self.label_agreement:.4%} "
                f"({self.disagreeing_pixels} pixels differ, {self.near_ties} of them near-ties)")
        if self.max_abs_diff is not None:
            text += f", max |Δ| {self.max_abs_diff:.2e} (limit {self.limit:.2e})"
        return text


@dataclass
class HeadGraph:
    """A head graph written to ``path``, with what its manifest records."""

    path: Path
    model: onnx.ModelProto
    head: Head
    #: The manifest's new ``output`` section and its top-level ``head`` section.
    output: dict
    section: dict
    parity: list[HeadParity]

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parity)


@dataclass
class HeadResult:
    output_dir: Path
    manifest: dict
    parity: list[HeadParity]
    lint: list[Finding]


def check_shapes(manifest: dict, fixed_size: tuple[int, int] | None = None, fixed_batch: int | None = None) -> list[tuple]:
    """The two shapes a head is checked at: those the export's parity gate ran (shapes the model
    takes, whatever its size rule), else the artifact's size and batch 2 at another aspect ratio
    (one shape for a graph whose size is fixed)."""
    spec = manifest["input"]
    channels = spec.get("channels") or len(spec.get("mean") or ()) or 3
    if fixed_size is not None:
        return [(fixed_batch or 1, channels, *fixed_size)]
    gated = [tuple(entry["shape"]) for entry in (manifest.get("parity") or {}).get("shapes") or []]
    if gated and all(len(shape) == 4 for shape in gated):
        return [(fixed_batch or shape[0], channels, *shape[2:]) for shape in gated]
    size = spec.get("size") or [None, None]
    height, width = size if all(size) else DEFAULT_CHECK_SIZE
    multiple = int((manifest.get("model") or {}).get("output_stride") or DEFAULT_SIZE_MULTIPLE)
    shapes = parity_shapes(height, width, multiple)
    return [(fixed_batch or shape[0], channels, *shape[2:]) for shape in shapes]


def build_head(scores_path: Path, manifest: dict, head_name: str, work_dir: Path, *, fused: bool = False,
               shapes: list[tuple] | None = None, thresholds: Thresholds = Thresholds(),
               progress: Callable[[str], None] = _no_progress, model: onnx.ModelProto | None = None) -> HeadGraph:
    """Append ``head_name`` to the scores graph at ``scores_path`` (described by ``manifest``; ``model``:
    that graph, already loaded), fuse it if asked, check it against the scores graph at ``shapes`` and
    write it to ``work_dir``."""
    check_head_request(head_name, fused)
    if manifest.get("crf"):
        raise BadInputError(f"{scores_path}: ends in segdeploy's dense CRF, whose outputs are already probabilities and "
                            "labels; append the head to the artifact without the CRF")
    output = manifest["output"]
    prediction, head = output["name"], Head.from_manifest(manifest)
    if head_name == head.name:
        raise BadInputError(f"{scores_path}: its output {prediction!r} already holds {head.name}; nothing to do")
    if not head.has_scores:
        raise BadInputError(f"{scores_path}: its output {prediction!r} already holds labels; append the head to the "
                            "scores artifact it was made from")
    classes = 2 if head.kind == "binary" else len(manifest["classes"])
    model = model or load_onnx(scores_path)
    shapes = shapes or check_shapes(manifest)
    feeds = [sample_feed(shape, manifest, seed=i) for i, shape in enumerate(shapes)]

    progress(f"appending the {head_name} head")
    head_model, new_head = append_head(model, head_name, prediction=prediction, head=head, classes=classes)
    section = {"name": head_name, "fused": False, "source_output": prediction}
    if fused:
        from .fuse import fuse_upsample_argmax

        progress("fusing the final upsample and argmax")
        head_model, fusion = fuse_upsample_argmax(head_model, new_head_output(head_name), manifest["input"]["name"],
                                                  feeds, head=head)
        new_head = dataclasses.replace(new_head, fused=True)
        section.update(fused=True, coordinate_transformation_mode=fusion.coordinate_transformation_mode)
    path = Path(work_dir) / f"{head_name}.onnx"
    onnx.save(head_model, str(path))

    progress(f"checking the {head_name} head against the scores at {len(shapes)} shapes")
    near_tie_dtype = np.float16 if _computes_in_fp16(model, manifest) else np.float32
    parity = _check(scores_path, path, manifest, feeds, shapes, prediction, head, new_head, thresholds, near_tie_dtype)
    section["parity"] = [p.to_json() for p in parity]
    new_name = new_head_output(head_name)
    scores_value = next(o for o in head_model.graph.output if o.name == new_name)
    new_output = {key: value for key, value in output.items() if key not in ("activation", "threshold", "head", "fused")}
    new_output.update(name=new_name, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem_type(scores_value)).name,
                      layout="NHW" if new_head.form == "labels" else "NCHW", all=[o.name for o in head_model.graph.output],
                      **new_head.to_manifest())
    return HeadGraph(path, head_model, new_head, new_output, section, parity)


def new_head_output(head_name: str) -> str:
    """The graph output a head writes: ``probabilities`` or ``labels``."""
    return OUTPUT_NAMES[head_name]


def _computes_in_fp16(model: onnx.ModelProto, manifest: dict) -> bool:
    return manifest.get("onnx", {}).get("precision") == "fp16" or any(
        o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for o in model.graph.output)


def _check(scores_path: Path, head_path: Path, manifest: dict, feeds: list[dict], shapes, prediction: str, head: Head,
           new_head: Head, thresholds: Thresholds, near_tie_dtype) -> list[HeadParity]:
    from ..backend.onnxrt.runner import OnnxrtRunner

    with OnnxrtRunner.from_artifact(scores_path, manifest) as scores_runner:
        references = [_infer(scores_runner, feed, scores_path, shape) for feed, shape in zip(feeds, shapes)]
    new_name = new_head_output(new_head.name)
    results = []
    with OnnxrtRunner.from_artifact(head_path, manifest) as head_runner:
        for shape, feed, reference in zip(shapes, feeds, references):
            actual = _infer(head_runner, feed, head_path, shape)
            scores, candidate = reference[prediction], actual[new_name]
            expected_labels = head.labels(scores)
            labels = new_head.labels(candidate)
            if labels.shape != expected_labels.shape:
                raise VerificationError(f"{head_path}: the {new_name} output is {list(candidate.shape)} at input "
                                        f"{list(shape)}; expected labels {list(expected_labels.shape)}")
            differ = labels != expected_labels
            ties = count_near_ties(scores, expected_labels, labels, head, near_tie_dtype)
            agreement = 1.0 - float(differ.mean()) if differ.size else 1.0
            passed = agreement >= thresholds.min_agreement
            max_diff = limit = None
            if new_head.has_scores:
                probability = compare_outputs(head.probabilities(scores), candidate, thresholds, shape, None, new_name)
                max_diff, limit, passed = probability.max_abs_diff, probability.limit, passed and probability.passed
            side = {}
            for name, value in reference.items():
                if name != prediction:
                    result = compare_outputs(value, actual.get(name, np.empty(0)), thresholds, shape, None, name)
                    side[name], passed = result.max_abs_diff, passed and result.passed
            results.append(HeadParity(tuple(shape), new_name, passed, agreement, int(differ.sum()), ties, max_diff,
                                      limit, side))
    return results


def _infer(runner, feed: dict, path: Path, shape) -> dict:
    try:
        return runner.infer(feed)
    except Exception as exc:  # ONNX Runtime's own exception types: a size the model does not take
        raise BadInputError(f"{path}: ONNX Runtime cannot run the graph at input {list(shape)} "
                            f"({str(exc).splitlines()[0][:200]})") from None


def count_near_ties(scores: np.ndarray, expected: np.ndarray, labels: np.ndarray, head: Head = Head(),
                    dtype=np.float32) -> int:
    """How many pixels whose ``labels`` differ from the ``expected`` ones (read from ``scores`` with
    ``head``) have scores for both labels within rounding (in ``dtype``) of each other."""
    differ = labels != expected
    if not differ.any():
        return 0
    eps = float(np.finfo(dtype).eps) * NEAR_TIE_ULPS
    where = np.nonzero(differ)
    if head.kind == "binary":
        values = scores[:, 0][where].astype(np.float64)
        return int((np.abs(values - head.threshold) <= eps * np.maximum(np.abs(values), 1.0)).sum())
    classes = scores.shape[1]
    got = labels[where].astype(np.int64)
    valid = (got >= 0) & (got < classes)
    batch, rows, cols = where
    best = scores[batch, expected[where].astype(np.int64), rows, cols].astype(np.float64)
    other = scores[batch, np.clip(got, 0, classes - 1), rows, cols].astype(np.float64)
    scale = np.maximum(np.maximum(np.abs(best), np.abs(other)), np.finfo(dtype).tiny)
    return int((valid & (np.abs(best - other) <= eps * scale)).sum())


def output_dir_for(onnx_path: Path, adopted: bool, output_dir: str | os.PathLike | None, suffix: str) -> Path:
    """``output_dir``, or by default ``out`` -> ``out_<suffix>`` (a user's ``theirs.onnx`` -> ``theirs_<suffix>``
    beside it); never the source's own folder."""
    if output_dir is None:
        if adopted or onnx_path.name != ONNX_NAME:
            return onnx_path.with_name(f"{onnx_path.stem}_{suffix}")
        return onnx_path.parent.with_name(f"{onnx_path.parent.name}_{suffix}")
    output_dir = Path(output_dir)
    if output_dir.resolve() == onnx_path.parent.resolve():
        raise BadInputError(f"{output_dir}: is the source model's folder; choose another output folder")
    return output_dir


def apply_head(path: str | os.PathLike, head_name: str, *, output_dir: str | os.PathLike | None = None,
               fused: bool = False, target: str | None = None, thresholds: Thresholds = Thresholds(),
               options: ModelOptions = ModelOptions(), progress: Callable[[str], None] = _no_progress) -> HeadResult:
    """Write a copy of the artifact (or user's ONNX file) at ``path`` whose prediction output is
    ``head_name``; raises ``VerificationError`` (writing nothing) when the head graph's check fails
    or the target's parser would reject it."""
    onnx_path, manifest, adopted = artifact_manifest(path, options)
    model = load_onnx(onnx_path)
    profile = get_target(target or manifest["onnx"].get("target")) if (target or manifest["onnx"].get("target")) else None
    check_head_request(head_name, fused, profile)
    output_dir = output_dir_for(onnx_path, adopted, output_dir, f"{head_name}_fused" if fused else head_name)
    _check_writable(output_dir)
    image = image_input(model, manifest["input"]["name"])
    if image is None:
        raise BadInputError(f"{onnx_path}: no float32 NCHW image input named {manifest['input']['name']!r}")
    dims = tensor_dims(image)
    fixed_size = tuple(dims[2:]) if all(isinstance(d, int) for d in dims[2:]) else None
    shapes = check_shapes(manifest, fixed_size, dims[0] if isinstance(dims[0], int) else None)
    with work_dir_beside(output_dir, ".segdeploy-head-") as work:
        work = Path(work)
        built = build_head(onnx_path, manifest, head_name, work, fused=fused, shapes=shapes, thresholds=thresholds,
                           progress=progress, model=model)
        if not built.passed:
            failed = next(p for p in built.parity if not p.passed)
            raise VerificationError(f"{onnx_path}: the {head_name} head does not reproduce the scores graph: "
                                    f"{failed.describe()}; limits: {thresholds.describe()}; nothing written")
        findings = []
        if profile is not None:
            progress(f"linting for target {profile.name}")
            findings = lint_onnx(built.model, profile)
            if errors(findings):
                raise VerificationError(f"{onnx_path}: target {profile.name}'s parser would reject the {head_name} graph: "
                                        + "; ".join(str(f) for f in errors(findings)[:5]) + "; nothing written")
        staged = work / "artifact"
        staged.mkdir()
        os.replace(built.path, staged / ONNX_NAME)
        new_manifest = _derived(manifest, onnx_path, staged / ONNX_NAME, built, profile, findings)
        write_manifest(staged, new_manifest)
        _move_into_place(staged, output_dir)
    return HeadResult(output_dir, new_manifest, built.parity, findings)


def check_head_request(head_name: str, fused: bool, profile=None) -> None:
    """Refuse, before any work, a head that does not exist or a fused head the target cannot run."""
    if head_name not in HEAD_NAMES:
        raise BadInputError(f"--head {head_name!r}: expected one of {', '.join(HEAD_NAMES)}")
    if fused and head_name != "labels":
        raise BadInputError(f"--fused fuses the final upsample with the argmax: it needs --head labels (not {head_name})")
    if not fused or profile is None:
        return
    from ..backend.trt.releases import FEATURES, Release

    release = Release.of_target(profile)
    if release is not None and not release.has("ipluginv3"):
        raise BadInputError(f"--fused: the fused upsample + argmax runs on TensorRT as segdeploy's IPluginV3 plugin "
                            f"(TensorRT >= {FEATURES['ipluginv3'].first}); target {profile.name} has "
                            f"{profile.runtime_name}: use --head labels without --fused")


def _derived(manifest: dict, source_path: Path, onnx_path: Path, built: HeadGraph, profile, findings) -> dict:
    """The parent's manifest (its precision, its ``parent``) with the new file, output and head."""
    import copy

    from ..precision.artifact import tool_versions

    derived = copy.deepcopy(manifest)
    onnx_section = derived["onnx"]
    onnx_section.update(onnx_file_section(onnx_path, opset=default_opset(built.model)))
    onnx_section.setdefault("precision", "fp32")
    onnx_section.pop("fp16_weight_casts", None)  # the graph is re-saved with its weights as they were loaded
    if profile is not None:
        onnx_section["target"] = profile.name
        derived["lint"] = lint_report(findings, profile.name)
    derived["output"] = built.output
    derived["head"] = {**built.section, "source": {"onnx": str(source_path.resolve()), "sha256": sha256_file(source_path)}}
    derived["versions"] = {**derived.get("versions", {}), **tool_versions()}
    derived["created"] = utc_timestamp()
    return derived



def _check_writable(output_dir: Path) -> None:
    """Refuse to write into a folder that holds something other than an artifact."""
    if output_dir.exists() and not output_dir.is_dir():
        raise BadInputError(f"{output_dir}: exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / MANIFEST_NAME).is_file():
        raise BadInputError(f"{output_dir}: exists and is not an artifact folder; choose another output folder")


def _move_into_place(staged: Path, output_dir: Path) -> None:
    """The staged folder becomes ``output_dir``: renamed in whole, or over an older artifact's files
    (the model first, the manifest that names it last)."""
    if not output_dir.exists():
        os.replace(staged, output_dir)
        return
    for name in (ONNX_NAME, MANIFEST_NAME):
        os.replace(staged / name, output_dir / name)
    shutil.rmtree(staged, ignore_errors=True)
