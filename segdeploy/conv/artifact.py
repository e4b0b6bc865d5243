"""``segdeploy plugins``: an artifact (or a user's ONNX file) with its depthwise convolutions as segdeploy
nodes and its atrous convolutions split, where measurement says so, checked and written as a new artifact.

:func:`apply_plugins` matches the candidates (:mod:`.rewrite`, :mod:`.atrous`), chooses among them
(``auto``: measured, :mod:`.measure`; ``all``; ``none``), and runs the parity gate of the new graph
against the original with ONNX Runtime at two shapes (a fixed-size graph: its one shape with two
different inputs): max |Δ| <= 1e-4 of the reference's scale for FP32 graphs, labels >= 99.99%.
Nothing is written when it fails. The new manifest's ``plugins`` section records what was replaced,
what was not and why, the times, the machine and the check.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..adopt import ModelOptions, artifact_manifest
from ..errors import BadInputError, VerificationError
from ..fileio import sha256_file, work_dir_beside
from ..manifest import ONNX_NAME, onnx_file_section, utc_timestamp, write_manifest
from ..onnx_io import default_opset, image_input, load_onnx, tensor_dims
from ..outputs import Head
from ..parity import Thresholds, compare_all_outputs, sample_feed
from .measure import Measurement, choose_by_measurement, machine, rewrite_with
from .rewrite import SEPARABLE, Candidate, Matches, find_candidates, named_nodes

MODES = ("auto", "all", "none")
#: The gate's limits: FP32 graphs differ by float32 rounding only (another summation order).
FP32_THRESHOLDS = Thresholds(max_abs_diff=1e-6, min_agreement=0.9999, rtol=1e-4)
#: FP16 graphs: the nodes compute in float32 where the native convolution rounds to float16.
FP16_THRESHOLDS = Thresholds(max_abs_diff=1e-3, min_agreement=0.999, rtol=1e-2)
#: The measuring size of a dynamic-size graph whose manifest records none.
DEFAULT_SIZE = (512, 512)


def _no_progress(message: str) -> None:
    pass


@dataclass
class PluginsResult:
    output_dir: Path
    manifest: dict
    matches: Matches
    measurement: Measurement | None


def _check_mode(value: str, option: str) -> None:
    if value not in MODES:
        raise BadInputError(f"{option} {value!r}: expected one of {', '.join(MODES)}")


def prefer_separable(matches: Matches, separable: bool = True) -> list[Candidate]:
    """``--plugins all``: one candidate per layer, the separable block where there is one (and ``separable``)."""
    chosen = []
    for options in matches.layers().values():
        blocks = [c for c in options if c.kind == SEPARABLE]
        chosen.append(blocks[0] if separable and blocks else options[0])
    return chosen


def _gate(source: Path, candidate: Path, manifest: dict, shapes: list[tuple], thresholds: Thresholds) -> list[dict]:
    from ..backend.onnxrt.runner import OnnxrtRunner

    feeds = [sample_feed(shape, manifest, seed=i) for i, shape in enumerate(shapes)]
    prediction, head = manifest["output"]["name"], Head.from_manifest(manifest)
    with OnnxrtRunner.from_artifact(source) as reference:
        expected = [reference.infer(feed) for feed in feeds]
    results = []
    with OnnxrtRunner.from_artifact(candidate) as runner:
        for shape, feed, reference_out in zip(shapes, feeds, expected):
            actual = runner.infer(feed)
            result = compare_all_outputs(reference_out, actual, thresholds, shape, prediction, head).to_json()
            result.update(_near_ties(reference_out[prediction], actual.get(prediction), head, result))
            results.append(result)
    return results


def _near_ties(reference, candidate, head: Head, result: dict) -> dict:
    """Label flips the value tolerance explains: where every value is within max |Δ| of the reference,
    a label can change only where its two scores (or a binary score and the threshold) are within
    2 max |Δ| of each other. Small maps make one such pixel more than 0.01% of the labels, so the
    gate passes when the values pass and every flip is one of these (counted in the result)."""
    if candidate is None or reference.shape != candidate.shape:
        return {}
    expected, labels = head.labels(reference), head.labels(candidate)
    where = np.nonzero(expected != labels)
    if not where[0].size:
        return {"disagreeing_pixels": 0, "near_ties": 0}
    gap = 2 * float(np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max())
    if head.kind == "binary":
        ties = np.abs(reference[:, 0][where] - head.threshold) <= gap / 2
    else:
        batch, rows, cols = where
        ties = np.abs(reference[batch, expected[where], rows, cols] - reference[batch, labels[where], rows, cols]) <= gap
    near = int(ties.sum())
    values_pass = all(o["max_abs_diff"] <= o["limit"] for o in result.get("outputs", {}).values()) \
        if result.get("outputs") else result["max_abs_diff"] <= result["limit"]
    passed = result["passed"] or (values_pass and near == where[0].size)
    return {"disagreeing_pixels": int(where[0].size), "near_ties": near, "passed": bool(passed)}


def apply_plugins(path: str | os.PathLike, output_dir: str | os.PathLike | None = None, *, plugins: str = "auto",
                  atrous: str = "auto", input_size: tuple[int, int] | None = None, threads: int = 0,
                  options: ModelOptions = ModelOptions(), progress: Callable[[str], None] = _no_progress,
                  counter: Callable[[int, int], None] | None = None,
                  layer_seconds: float | None = None) -> PluginsResult:
    """Write a copy of the artifact (or user's ONNX file) at ``path`` with the chosen plugins; raises
    VerificationError (writing nothing) when the new graph fails the parity gate."""
    from ..head.artifact import _check_writable, _move_into_place, output_dir_for
    from . import atrous as atrous_module

    _check_mode(plugins, "--plugins")
    _check_mode(atrous, "--atrous")
    onnx_path, manifest, adopted = artifact_manifest(path, options)
    output_dir = output_dir_for(onnx_path, adopted, output_dir, "plugins")
    _check_writable(output_dir)
    model = named_nodes(load_onnx(onnx_path))
    image = image_input(model, manifest["input"]["name"])
    if image is None:
        raise BadInputError(f"{onnx_path}: no float32 NCHW image input named {manifest['input']['name']!r}")
    dims = tensor_dims(image)
    fixed_hw = tuple(dims[2:]) if all(isinstance(d, int) for d in dims[2:]) else None
    if input_size is not None:
        input_size = tuple(int(v) for v in input_size)
        if fixed_hw is not None and input_size != fixed_hw:
            raise BadInputError(f"{onnx_path}: the input is fixed at {fixed_hw[0]}x{fixed_hw[1]}; --input-size "
                                f"{input_size[0]} {input_size[1]} differs")
    recorded = tuple((manifest["input"].get("size") or (None, None))[:2])
    size = input_size or fixed_hw or (recorded if all(recorded) else DEFAULT_SIZE)
    batch = dims[0] if isinstance(dims[0], int) else 1
    channels = dims[1] if isinstance(dims[1], int) else 3
    feed = sample_feed((batch, channels, *size), manifest, seed=0)

    progress("matching depthwise and dilated convolutions")
    matches = find_candidates(model)
    cpu_only = _cpu_only_skips(manifest, matches)
    if cpu_only:  # the separable block has no TensorRT plugin: a TensorRT target keeps the depthwise option
        matches.candidates = [c for c in matches.candidates if c.kind != SEPARABLE]
    atrous_found, atrous_skipped = [], []
    if atrous != "none":
        if fixed_hw is None and input_size is None:
            if atrous == "all":
                raise BadInputError(f"{onnx_path}: has dynamic height and width; the atrous rewrite fixes the size: "
                                    "give --input-size H W")
            atrous_skipped.append(("*", "dynamic input size: give --input-size H W to split the atrous convolutions"))
        else:
            atrous_found = atrous_module.atrous_candidates(model, size)

    def atrous_rewrite(m, names):
        return atrous_module.rewrite_atrous(m, size, names)

    measurement = None
    depthwise = [] if plugins == "none" else matches.candidates
    if plugins == "auto" or (atrous == "auto" and atrous_found):
        measurement = choose_by_measurement(
            model, depthwise if plugins == "auto" else [], feed, threads=threads,
            atrous=atrous_found if atrous == "auto" else [], atrous_rewrite=atrous_rewrite, progress=progress,
            counter=counter, **({"layer_seconds": layer_seconds} if layer_seconds else {}))
    chosen: list = []
    if plugins == "all":
        chosen += prefer_separable(matches)
    elif plugins == "auto":
        chosen += [c for c in measurement.chosen if isinstance(c, Candidate)]
    if atrous == "all":  # one rewrite per node: a depthwise layer replaced by its plugin is not split
        chosen += [a.node for a in atrous_found if a.node not in {c.layer for c in chosen}]
    elif atrous == "auto" and measurement is not None:
        chosen += [c for c in measurement.chosen if isinstance(c, str)]
    new_model = rewrite_with(model, chosen, atrous_rewrite)
    atrous_chosen = [c for c in chosen if isinstance(c, str)]
    new_fixed_hw = size if atrous_chosen else fixed_hw

    precision = manifest.get("onnx", {}).get("precision", "fp32")
    thresholds = FP16_THRESHOLDS if precision == "fp16" else FP32_THRESHOLDS
    shape = (batch, channels, *size)
    shapes = [shape, shape] if new_fixed_hw is not None else [shape, _second_shape(shape, manifest)]
    with work_dir_beside(output_dir, ".segdeploy-plugins-") as work:
        staged = Path(work) / "artifact"
        staged.mkdir()
        new_path = staged / ONNX_NAME
        onnx.save(new_model, str(new_path))
        progress(f"checking the rewritten graph against the original at {len(shapes)} inputs")
        parity = _gate(onnx_path, new_path, manifest, shapes, thresholds)
        failed = [p for p in parity if not p["passed"]]
        if failed:
            raise VerificationError(f"{onnx_path}: the rewritten graph does not reproduce the original at input "
                                    f"{failed[0]['shape']}: max |Δ| {failed[0]['max_abs_diff']:.3g} (limit "
                                    f"{failed[0]['limit']:.3g}), label agreement {failed[0]['argmax_agreement']}; "
                                    "nothing written")
        section = _section(plugins, atrous, size, matches, chosen, atrous_found, atrous_skipped + cpu_only, measurement, parity,
                           thresholds, threads)
        new_manifest = _derived(manifest, onnx_path, new_path, new_model, section, new_fixed_hw if atrous_chosen else None)
        write_manifest(staged, new_manifest)
        _move_into_place(staged, output_dir)
    return PluginsResult(output_dir, new_manifest, matches, measurement)


def _cpu_only_skips(manifest: dict, matches: Matches) -> list[tuple[str, str]]:
    """(candidate, reason) of the separable blocks a TensorRT-target artifact cannot run."""
    from ..targets import get_target

    name = manifest.get("onnx", {}).get("target")
    target = get_target(name) if name else None
    if target is None or target.runtime != "tensorrt":
        return []
    return [(c.name, f"SeparableConv runs on ONNX Runtime (CPU) only; target {target.name} runs {target.runtime_name}")
            for c in matches.candidates if c.kind == SEPARABLE]


def _second_shape(shape: tuple, manifest: dict) -> tuple:
    from ..parity import parity_shapes

    multiple = int((manifest.get("model") or {}).get("output_stride") or 32)
    second = parity_shapes(shape[2], shape[3], multiple)[1]
    return (2, shape[1], *second[2:])


def _section(plugins, atrous, size, matches: Matches, chosen, atrous_found, atrous_skipped, measurement, parity,
             thresholds: Thresholds, threads: int) -> dict:
    names = {c.name if isinstance(c, Candidate) else f"{c}:atrous" for c in chosen}
    replaced = [{**c.to_json(), "node": c.name} for c in chosen if isinstance(c, Candidate)]
    replaced += [{"node": f"{a.node}:atrous", "layer": a.node, "kind": "atrous", "dilations": list(a.dilation),
                  "map_size": list(a.map_size), "regions": a.regions, "macs_before": a.macs_before,
                  "macs_after": a.macs_after} for a in atrous_found if a.node in chosen]
    skipped = [] if measurement is None else [{"node": n, "reason": r} for n, r in measurement.skipped]
    taken = names | {s["node"] for s in skipped}
    mode_reason = {"none": "--plugins none"}
    for candidate in matches.candidates:
        if candidate.name not in taken:
            reason = mode_reason.get(plugins) or f"--plugins {plugins}: the layer's other option was taken"
            skipped.append({"node": candidate.name, "reason": reason})
    for a in atrous_found:
        if f"{a.node}:atrous" not in taken:
            skipped.append({"node": f"{a.node}:atrous", "reason": f"--atrous {atrous}"})
    skipped += [{"node": node, "reason": reason} for node, reason in atrous_skipped]
    section = {
        "mode": plugins, "atrous": atrous, "input_size": list(size), "replaced": replaced, "skipped": skipped,
        "unmatched": [u.to_json() for u in matches.unmatched],
        "parity": {"thresholds": thresholds.to_json(), "shapes": parity},
    }
    section["timing"] = measurement.to_json() if measurement is not None else {"machine": machine(threads)}
    return section


def _derived(manifest: dict, source_path: Path, onnx_path: Path, model: onnx.ModelProto, section: dict,
             fixed_hw: tuple[int, int] | None) -> dict:
    from ..precision.artifact import tool_versions

    derived = copy.deepcopy(manifest)
    derived["onnx"].update(onnx_file_section(onnx_path, opset=default_opset(model)))
    derived["onnx"].setdefault("precision", "fp32")
    derived["onnx"].pop("fp16_weight_casts", None)
    if fixed_hw is not None:  # the atrous regions hold for this size only
        derived["input"]["size"] = list(fixed_hw)
        derived.pop("dynamic_axes", None)
    derived["plugins"] = {**section, "source": {"onnx": str(source_path.resolve()), "sha256": sha256_file(source_path)}}
    derived["versions"] = {**derived.get("versions", {}), **tool_versions()}
    derived["created"] = utc_timestamp()
    return derived

