"""FP16 and INT8 artifacts end to end: load, reduce, gate against FP32, write, record provenance.

Both commands share the steps; they differ in how a model is reduced (``build(keep)``) and in
what the manifest records. A result is keyed by everything it depends on (parent sha256, image
files, settings, tool versions): re-running with the same inputs finds the key in the output
folder's manifest and reuses the result; INT8 calibration ranges are cached under their own key,
so a run that changes only the gate settings quantizes again without recalibrating.

A model with a deployment head appended by segdeploy (``probabilities``, ``labels``, fused or
not: ``segdeploy.head``) is reduced without it: the head is cut off at the scores tensor it reads,
the scores graph is converted or calibrated and quantized, and every build gets the head back
unchanged (``graph.split_head``/``attach_head``). Reducing the head graph itself would be no
better and harder: the FP16 converter would type the ArgMax/Cast/threshold and the fused node's
input, the quantizer would put Q/DQ around them, and ONNX Runtime's quantization tools (shape
inference, the calibrator's sessions) cannot load the fused node. The head computes nothing a
lower precision would speed up (an argmax or a softmax over the scores), the fused node reads the
scores as float32 through the FP16 graph's output Cast (at the scores' low resolution), and the
gate still runs the whole head graph: label maps against the FP32 head artifact's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from ..adopt import ModelOptions
from ..convert import prepare_graph
from ..errors import BadInputError
from ..fileio import sha256_file
from ..fixtures.scenes import generate_scenes
from ..manifest import MANIFEST_NAME, ONNX_NAME, read_manifest
from ..onnx_io import load_onnx
from ..parity import sample_tensors
from ..preprocess import input_channels, takes_pictures
from ..targets import DEFAULT_TARGET, get_target
from .artifact import Source, load_source, output_dir_for, tool_versions, write_artifact
from .comparison import DEFAULT_BATCH, Outputs, Reference, compare, measure_latency, open_session
from .data import ImageSet, folder_fingerprint, image_folder_files, load_image_set, what_to_look_for
from .fp16 import convert_to_fp16, overflowing_nodes
from .gate import Budget, GateOutcome, run_gate
from .graph import HeadTail, attach_head, keep_only_outputs, layer_macs, name_nodes, split_head, weighted_layers
from .int8 import SCHEMES, Int8Builder

#: Probe images generated when no --val folder is given to ``fp16`` (seeded, so results repeat).
GENERATED_PROBE = {"count": 8, "seed": 20240}


def _no_progress(message: str) -> None:
    pass


@dataclass
class PrecisionResult:
    output_dir: Path
    manifest: dict
    section: str  # "fp16" or "quantization"
    reused: bool

    @property
    def report(self) -> dict:
        return self.manifest[self.section]

    @property
    def passed(self) -> bool:
        return self.report["gate"]["passed"]

    def to_json(self) -> dict:
        return {
            "output": str(self.output_dir),
            "precision": self.manifest["onnx"]["precision"],
            "target": self.manifest["onnx"].get("target"),
            "reused": self.reused,
            **self.report,
        }


#: Per-channel DequantizeLinear (``axis``) exists from opset 13 on: older graphs are converted up first.
QDQ_MIN_OPSET = 13


@dataclass(frozen=True)
class GateSettings:
    budget: Budget = Budget()
    sensitivity: bool = True
    #: Validation images each layer's sensitivity is scored on (the budget is checked on all).
    sensitivity_images: int = 8


def make_fp16(
    path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    val_dir: str | os.PathLike | None = None,
    keep_fp32: tuple[str, ...] = (),
    gate: GateSettings = GateSettings(),
    target: str | None = None,
    options: ModelOptions = ModelOptions(),
    progress: Callable[[str], None] = _no_progress,
) -> PrecisionResult:
    """An FP16 artifact of the FP32 model at ``path``, checked against it on ``val_dir`` (or
    generated scenes; seeded random tensors for a tensor input)."""
    source = load_source(path, options)
    profile = _target(source, target, default=None)
    output_dir = output_dir_for(source, output_dir, "fp16")
    settings = {"keep_fp32": sorted(keep_fp32), "gate": asdict(gate), "output": source.manifest["output"]}
    key = _key(source, "fp16", settings, _fingerprint(val_dir, "validation", source.spec) if val_dir else GENERATED_PROBE)
    reused = _reusable(output_dir, "fp16", key)
    if reused:
        return PrecisionResult(output_dir, reused, "fp16", True)

    _check_budget(source, gate)
    validation = _validation_set(source, val_dir, fallback=None)
    _settle_size(source, validation)
    with tempfile.TemporaryDirectory(prefix="segdeploy-fp16-") as work:
        float_path, preparation, tail = _prepare(source, Path(work), None, progress)
        model = name_nodes(load_onnx(float_path))
        unknown = set(keep_fp32) - {n.name for n in model.graph.node}
        if unknown:
            raise BadInputError(f"--keep-fp32: no node named {', '.join(sorted(unknown))} in {source.onnx_path}")
        progress("looking for activations beyond the FP16 range")
        overflow = overflowing_nodes(model, validation.subset(gate.sensitivity_images), source.spec, source.input_name)
        always_fp32 = frozenset(keep_fp32) | frozenset(overflow)
        builds = itertools.count(1)

        def build(keep: frozenset) -> Path:
            out = Path(work) / f"fp16-{next(builds)}.onnx"
            onnx.save(convert_to_fp16(model, always_fp32 | keep), str(out))
            return _put_head_back(out, tail)

        candidates = [layer for layer in weighted_layers(model) if layer[0] not in always_fp32]
        named = Path(work) / "fp32-named.onnx"
        onnx.save(model, str(named))
        section = {
            "key": key,
            "converter": "onnxruntime.transformers.float16 (float32 inputs/outputs kept)",
            "target_profile": profile.to_manifest() if profile else None,
            "kept_fp32_by_request": sorted(keep_fp32),
            "kept_fp32_for_range": overflow,
            **preparation,
        }
        return _gate_and_write(source, output_dir, "fp16", profile.name if profile else None, "fp16", section,
                               build, candidates, named, validation, gate, progress)  # fmt: skip


def make_int8(
    path: str | os.PathLike,
    calib_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    method: str = "entropy",
    target: str | None = None,
    val_dir: str | os.PathLike | None = None,
    keep_float: tuple[str, ...] = (),
    gate: GateSettings = GateSettings(),
    batch: int = 8,
    min_images: int = 8,
    max_images: int | None = None,
    percentile: float = 99.999,
    options: ModelOptions = ModelOptions(),
    progress: Callable[[str], None] = _no_progress,
    calibration_progress: Callable[[int, int], None] | None = None,
) -> PrecisionResult:
    """A Q/DQ INT8 artifact for ``target``'s runtime, calibrated on the images under ``calib_dir``.

    ``calibration_progress(done, total)`` is called after each calibration batch.
    """
    source = load_source(path, options)
    profile = _target(source, target, default=DEFAULT_TARGET)
    scheme = SCHEMES[profile.quantization]
    if source.batch is not None:
        batch = source.batch  # a fixed-batch graph takes only its own batch size
    if batch < 1 or min_images < 1:
        raise BadInputError("--batch and --min-images must be at least 1")
    _check_budget(source, gate)
    output_dir = output_dir_for(source, output_dir, "int8")
    calibration = {"method": method, "batch": batch, "max_images": max_images, "preprocessing": source.spec,
                   "files_sha256": _fingerprint(calib_dir, "calibration", source.spec, max_images)}  # fmt: skip
    if method == "percentile":
        calibration["percentile"] = percentile
    calibration_key = _key(source, "int8-calibration", {"scheme": asdict(scheme), **calibration})
    settings = {"calibration_key": calibration_key, "keep_float": sorted(keep_float), "gate": asdict(gate),
                "output": source.manifest["output"]}  # fmt: skip
    key = _key(source, "int8", settings, _fingerprint(val_dir, "validation", source.spec) if val_dir else "calibration images")
    reused = _reusable(output_dir, "quantization", key)
    if reused:
        return PrecisionResult(output_dir, reused, "quantization", True)

    progress("loading calibration images")
    calib = load_image_set(calib_dir, source.spec, purpose="calibration", min_images=min_images, max_images=max_images, with_masks=False)
    _settle_size(source, calib)
    if len(calib) < batch:
        raise BadInputError(
            f"{calib_dir}: the calibration set has {len(calib)} image(s), fewer than the batch size {batch}; "
            "add images or lower --batch"
        )
    validation = _validation_set(source, val_dir, fallback=calib)
    if validation.size != calib.size and source.fixed_size is None and validation.tensors:
        raise BadInputError(f"{val_dir}: validation tensors are {validation.size[0]}x{validation.size[1]}, the calibration "
                            f"tensors {calib.size[0]}x{calib.size[1]}; give both at one size")  # fmt: skip
    cache = output_dir / f"calibration-{calibration_key[:16]}.json"
    with tempfile.TemporaryDirectory(prefix="segdeploy-int8-") as work:
        float_path, preparation, tail = _prepare(source, Path(work), QDQ_MIN_OPSET, progress)
        progress("preparing the graph (shape inference, constant folding)")
        builder = Int8Builder(float_path, scheme, method, Path(work), cache, percentile)
        recalibrated = not cache.is_file()
        if recalibrated:
            progress(f"calibrating ({method}) on {len(calib)} images")
            output_dir.mkdir(parents=True, exist_ok=True)
            done = 0

            def counted(count: int) -> None:
                nonlocal done
                done += count
                if calibration_progress:
                    calibration_progress(done, len(calib))

            builder.calibrate(calib, source.spec, source.input_name, batch, counted)
        for stale in output_dir.glob("calibration-*.json"):
            if stale != cache:
                stale.unlink()
        candidates = builder.candidates()
        unknown = set(keep_float) - {name for name, _ in candidates}
        if unknown:
            raise BadInputError(f"--keep-float: no weighted layer named {', '.join(sorted(unknown))} "
                                "(see the manifest's sensitivity ranking)")
        section = {
            "key": key,
            "quantizer": "onnxruntime.quantization (QDQ)",
            "target_profile": profile.to_manifest(),
            "scheme": scheme.describe(),
            "calibration": {
                **calibration,
                "key": calibration_key,
                "folder": str(Path(calib_dir)),
                "count": len(calib),
                "skipped": calib.skipped,
                "ranges_file": cache.name,
                "reused_ranges": not recalibrated,
            },
            "kept_float_by_request": sorted(keep_float),
            **preparation,
        }
        always_float = frozenset(keep_float)
        return _gate_and_write(source, output_dir, "int8", profile.name, "quantization", section,
                               lambda keep: _put_head_back(builder.build(always_float | keep), tail),
                               [c for c in candidates if c[0] not in always_float], builder.prepared,
                               validation, gate, progress)  # fmt: skip


def _gate_and_write(source: Source, output_dir: Path, precision: str, target: str | None, section_name: str,
                    section: dict, build, candidates, layers_model: Path, validation: ImageSet, gate: GateSettings,
                    progress) -> PrecisionResult:  # fmt: skip
    """Gate the reduced model (keeping sensitive layers back if needed) and write the artifact.

    ``layers_model`` is the float graph whose node names ``build`` and ``candidates`` use.
    """
    batch, fixed = (source.batch, True) if source.batch else (DEFAULT_BATCH, False)
    progress(f"running FP32 on {len(validation)} validation samples")
    fp32 = open_session(source.onnx_path)  # the parent as the user gave it: every output, unconverted
    outputs = Outputs.of(source.heads, source.prediction)
    reference = Reference.compute(fp32, validation, source.spec, batch, fixed, keep_logits=gate.budget.max_prob_error is not None,
                                  outputs=outputs, classes=len(source.manifest["classes"]))  # fmt: skip
    subset = reference.subset(gate.sensitivity_images, fp32)
    outcome = run_gate(build, candidates, reference, subset, gate.budget, gate.sensitivity, progress)
    progress("measuring the final model's error against FP32")
    final = compare(open_session(outcome.model), reference, reference_session=fp32)
    written = load_onnx(outcome.model, load_external_data=False)
    section["gate"] = {
        "passed": outcome.passed,
        "missed": outcome.missed,
        "prediction_output": source.prediction,
        "head": source.head.describe(),
        "budget": asdict(gate.budget),
        "validation": validation.describe(),
        "fp32_miou": reference.miou,
        "before_sensitivity": outcome.initial.to_json(),
        "final": final.to_json(),
        "kept_in_higher_precision": outcome.kept,
        "sensitivity_ranking": outcome.ranking,
        "search": outcome.steps,
        "cost": _cost(outcome, source, layers_model, progress),
    }
    onnx_fields = {"opset_conversion": section["graph_preparation"]} if section.get("graph_preparation", {}).get("opset") else {}
    manifest = write_artifact(output_dir, outcome.model, source, precision, target, {section_name: section},
                              outputs=[o.name for o in written.graph.output], onnx_fields=onnx_fields)  # fmt: skip
    return PrecisionResult(output_dir, manifest, section_name, False)


def _cost(outcome: GateOutcome, source: Source, layers_model: Path, progress) -> dict:
    """What keeping layers in higher precision costs: their share of the MACs, and ORT CPU latency."""
    kept = set(outcome.kept)
    macs = layer_macs(layers_model, source.spec)
    cost = {"kept_mac_share": round(sum(macs.get(k, 0) for k in kept) / sum(macs.values()), 4) if macs else None}
    if kept:
        progress("measuring the latency cost (ONNX Runtime, CPU, batch 1)")
        batch = source.batch or 1
        reduced = measure_latency(open_session(outcome.initial_model), source.spec, batch)
        final = measure_latency(open_session(outcome.model), source.spec, batch)
        cost["latency_ms"] = {"runtime": "onnxruntime-cpu", "fully_reduced": round(reduced, 3), "final": round(final, 3),
                              "ratio": round(final / reduced, 3)}
    return cost


def _validation_set(source: Source, val_dir, fallback: ImageSet | None) -> ImageSet:
    if val_dir is not None:
        return load_image_set(val_dir, source.spec, purpose="validation", size=_size_of(source, fallback))
    if fallback is not None:
        return replace(fallback, root=Path(f"{fallback.root} (calibration images: no --val given)"))

    height, width = source.spec["size"]
    if not height or not width:
        raise BadInputError(f"{source.onnx_path}: the input size is dynamic; give the size to check at with --size H W "
                            "(or a --val folder)")  # fmt: skip
    if not takes_pictures(source.spec):
        channels = input_channels(source.spec)
        tensors = sample_tensors((GENERATED_PROBE["count"], channels, height, width), seed=GENERATED_PROBE["seed"])
        return ImageSet(Path("seeded random tensors (no --val given)"), [], tensors, fingerprint="generated")
    scenes = generate_scenes(GENERATED_PROBE["count"], height, width, seed=GENERATED_PROBE["seed"])
    return ImageSet(Path("generated scenes (no --val given)"), [], np.stack([s.image for s in scenes]), fingerprint="generated")


def _size_of(source: Source, calibration: ImageSet | None) -> tuple[int, int] | None:
    """The size validation pictures are resized to: the manifest's, else the calibration set's."""
    size = source.spec.get("size") or [None, None]
    if all(size):
        return tuple(size)
    return calibration.size if calibration is not None else None


def _settle_size(source: Source, samples: ImageSet) -> None:
    """A dynamic-size graph without --size runs at its tensors' own size: record it in the spec."""
    if not all(source.spec.get("size") or [None, None]):
        source.spec["size"] = [int(s) for s in samples.size]


def _prepare(source: Source, work: Path, min_opset: int | None, progress) -> tuple[Path, dict, HeadTail | None]:
    """The float graph a step reduces: the scores graph under a deployment head (see the module's
    notes), FP16 weights behind Casts folded, converted to ``min_opset`` if older, side outputs
    dropped when the manifest asks; (its path, the section's record, the head to put back or None)."""
    progress("preparing the graph (deployment head, FP16 weight casts, opset)")
    path, tail, record = source.onnx_path, None, {}
    if _has_segdeploy_head(source):
        try:
            scores_model, tail = split_head(load_onnx(path), source.prediction)
        except ValueError as exc:
            raise BadInputError(f"{path}: the manifest says the model ends in a {source.head.name} head, but {exc}") from None
        path = work / "scores" / source.onnx_path.name  # the user's file name in what preparation reports
        path.parent.mkdir()
        onnx.save(scores_model, str(path))
        record["deployment_head"] = {"name": source.head.name, "fused": source.head.fused, "scores_tensor": tail.scores,
                                     "nodes": [n.op_type for n in tail.nodes],
                                     "handling": "the scores graph is reduced; the head is put back unchanged"}  # fmt: skip
    prepared = prepare_graph(path, work, source.spec, min_opset=min_opset)
    if prepared.changed:
        record["graph_preparation"] = prepared.report
    path = prepared.path
    if source.drop_side_outputs:
        pruned, dropped = keep_only_outputs(load_onnx(path), [tail.scores if tail else source.prediction])
        path = work / "float-prediction-only.onnx"
        onnx.save(pruned, str(path))
        record["dropped_side_outputs"] = dropped
    return path, record, tail


def _has_segdeploy_head(source: Source) -> bool:
    """Whether the prediction is a head segdeploy appended (the manifest's ``head`` section), or a
    label map; a user's graph ending in its own Sigmoid or Softmax is reduced as it is."""
    return source.head.name != "logits" and (not source.head.has_scores or bool(source.manifest.get("head")))


def _put_head_back(scores_path: Path, tail: HeadTail | None) -> Path:
    """The reduced scores graph at ``scores_path`` with the deployment head attached again (in place)."""
    if tail is not None:
        onnx.save(attach_head(load_onnx(scores_path), tail), str(scores_path))
    return scores_path


def _check_budget(source: Source, gate: GateSettings) -> None:
    if gate.budget.max_prob_error is not None and not source.head.has_scores:
        raise BadInputError(f"--max-prob-error: {source.onnx_path} outputs labels only (deployment head 'labels'): there "
                            "are no probabilities to compare; the gate compares its label maps")  # fmt: skip


def _target(source: Source, name: str | None, default: str | None):
    name = name or source.manifest["onnx"].get("target") or default
    if name is None:
        return None
    profile = get_target(name)
    if source.opset > profile.max_opset:
        raise BadInputError(
            f"{source.onnx_path}: opset {source.opset} is newer than target {profile.name!r} accepts "
            f"(<= {profile.max_opset}); export again with --target {profile.name}"
        )
    return profile


def _fingerprint(folder, purpose: str, spec: dict, max_images: int | None = None) -> str:
    root, files, masks = image_folder_files(folder, spec)
    if not files:
        kind = "images" if takes_pictures(spec) else "tensors"
        raise BadInputError(f"{folder}: no {purpose} {kind} here (looked for {what_to_look_for(spec)}, recursively)")
    files = files[:max_images] if max_images else files
    mask_files = sorted(p for p in masks.rglob("*") if p.is_file()) if masks else []
    return folder_fingerprint(folder, files + mask_files)


def _key(source: Source, kind: str, settings: dict, *extra) -> str:
    payload = {"kind": kind, "parent": source.sha256, "input": source.spec, "settings": settings, "extra": extra,
               "versions": tool_versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _reusable(output_dir: Path, section: str, key: str) -> dict | None:
    """The manifest of an earlier result with this key whose model file is intact, else None."""
    manifest_path, onnx_path = output_dir / MANIFEST_NAME, output_dir / ONNX_NAME
    if not (manifest_path.is_file() and onnx_path.is_file()):
        return None
    try:
        manifest = read_manifest(manifest_path)
    except BadInputError:
        return None
    if manifest.get(section, {}).get("key") != key or manifest["onnx"].get("sha256") != sha256_file(onnx_path):
        return None
    return manifest
