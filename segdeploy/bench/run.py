"""Benchmarking artifacts on several backends side by side: each (artifact, backend) pair in its
own subprocess (``worker``), then the pre/post-processing on the CPU, gathered into one
``segdeploy.bench/1`` document (``schemas/bench.schema.json``) with the machine and board state.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, replace
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .. import __version__
from ..crf import CRFParams, dense_crf
from ..errors import BadInputError, SegdeployError
from ..manifest import utc_timestamp
from ..outputs import Head
from ..parity import sample_pictures, sample_tensors
from ..preprocess import input_channels, input_spec, normalize, resize, takes_pictures
from .jetson import board_state
from .timing import BenchSettings, latency_stats, timed_runs, warm_up
from .worker import bench_input, graph_input_dims

BENCH_SCHEMA = "segdeploy.bench/1"
SCHEMA_FILE = Path(__file__).parents[1] / "schemas" / "bench.schema.json"


def settle_settings(artifacts: list[str], settings: BenchSettings, options=None, batches_given: bool = True,
                    size_given: bool = True) -> BenchSettings:
    """``settings`` checked against every artifact's input: a fixed batch, height or width of a graph must be
    the one timed. Without ``--batch`` a graph's fixed batch is taken; without ``--input-size`` its fixed size."""
    for artifact in artifacts:
        onnx_path, manifest, _ = bench_input(artifact, options)
        dims = graph_input_dims(onnx_path, manifest)
        name = manifest["input"].get("name")
        batch = dims[0]
        if batch is not None and set(settings.batches) != {batch}:
            if batches_given:
                raise BadInputError(f"{artifact}: input {name!r} has a fixed batch size of {batch}; --batch "
                                    f"{','.join(map(str, settings.batches))} cannot be fed to it (give --batch {batch}, "
                                    "or export the model with a dynamic batch)")
            settings = replace(settings, batches=(batch,))
        fixed = (dims[2], dims[3])
        if None not in fixed and fixed != (settings.height, settings.width):
            if size_given:
                raise BadInputError(f"{artifact}: input {name!r} is fixed at {fixed[0]}x{fixed[1]}; --input-size "
                                    f"{settings.height} {settings.width} cannot be fed to it")
            settings = replace(settings, height=fixed[0], width=fixed[1])
    return settings


def bench_processing(height: int, width: int, num_classes: int, source_hw=(720, 1280), crf: bool = False,
                     manifest: dict | None = None) -> dict:
    """Pre-processing (resize a camera frame + normalise, as the model's input takes it) and
    post-processing (labels as the prediction output's head reads them: argmax over classes, or one
    channel thresholded; optionally the dense CRF), on the CPU. A ``labels`` head leaves the host
    nothing to do: its post-processing (and CRF, which needs scores) is ``skipped``, not timed."""
    rng = np.random.default_rng(0)
    spec_in = (manifest or {}).get("input") or input_spec(height, width)
    head = Head.from_manifest(manifest)
    channels = input_channels(spec_in) or 3
    if takes_pictures(spec_in):
        frame = rng.integers(0, 256, size=(*source_hw, 3), dtype=np.uint8)
        pre = lambda: normalize(resize(frame, height, width), spec_in)  # noqa: E731
        pre_what = (f"resize {source_hw[0]}x{source_hw[1]} uint8 -> normalised float32 NCHW"
                    + (f" ({spec_in.get('color')})" if spec_in.get("color", "RGB") != "RGB" else ""))
    else:
        sample = sample_tensors((1, channels, height, width))
        pre = lambda: np.ascontiguousarray(sample, dtype=np.float32).copy()  # noqa: E731
        pre_what = f"tensor input ({channels} channels) fed as given: a float32 (1, {channels}, H, W) copy, no resize"
    warm_up(pre, 1)
    stages = {"preprocess": {"what": pre_what, **latency_stats(timed_runs(pre, 10), 1)},
              "postprocess": postprocess_stage(head, height, width, num_classes)}
    if crf and not head.has_scores:
        stages["crf"] = {"what": "not applicable: the dense CRF refines scores, and the graph outputs labels only",
                         "skipped": True}
    elif crf:
        scores = _sample_scores(head, height, width, num_classes)
        picture = sample_pictures((1, 3, height, width))
        if head.kind == "binary":  # two-class probabilities [1 - p, p]
            p = head.probabilities(scores)
            unary, kind = np.concatenate([1.0 - p, p], axis=1), "probabilities"
        else:
            unary, kind = scores, ("probabilities" if head.activation == "softmax" else "logits")
        refine = lambda: dense_crf(unary, picture, output="labels", unary_kind=kind)  # noqa: E731
        warm_up(refine, 1)
        params = CRFParams()
        stages["crf"] = {"what": f"dense CRF on the CPU ({params.iterations} iterations, DeepLab v2 parameters)",
                         **latency_stats(timed_runs(refine, 3), 1)}
    return stages


def postprocess_stage(head: Head, height: int, width: int, num_classes: int) -> dict:
    """The host's post-processing of one image's prediction output, timed: its labels as ``head`` reads them
    (argmax, or one channel thresholded). A ``labels`` head's output is the label map already: skipped."""
    if not head.has_scores:
        return {"what": "none: the graph outputs the label map (deployment head 'labels'); nothing to do on the host",
                "skipped": True}
    scores = _sample_scores(head, height, width, num_classes)
    post = lambda: head.labels(scores).astype(np.uint8)  # noqa: E731
    if head.kind == "binary":
        what = f"binary: one channel > {head.threshold:g} -> uint8 labels"
    else:
        what = f"argmax over {num_classes} classes -> uint8 labels"
    warm_up(post, 1)
    return {"what": what, **latency_stats(timed_runs(post, 10), 1)}


def _sample_scores(head: Head, height: int, width: int, num_classes: int) -> np.ndarray:
    """Random scores (1, C, H, W) float32 as ``head``'s output holds them (probabilities after a sigmoid)."""
    channels = 1 if head.kind == "binary" else num_classes
    scores = np.random.default_rng(0).standard_normal((1, channels, height, width), dtype=np.float32)
    return 1.0 / (1.0 + np.exp(-scores)) if head.activation == "sigmoid" else scores


def run_bench(artifacts: list[str], backends: list[str], settings: BenchSettings, progress=lambda message: None,
              options=None) -> dict:
    """Benchmark every (artifact, backend) in its own subprocess; return the ``segdeploy.bench/1`` document.

    ``options`` (``adopt.ModelOptions``) complete what a bare ONNX file's graph cannot say.
    """
    manifests = [bench_input(a, options)[1] for a in artifacts]  # a bad path fails here, before any subprocess
    results = []
    for artifact in artifacts:
        for backend in backends:
            progress(f"benchmarking {Path(artifact).name} on {backend}")
            results.extend(_bench_in_subprocess(backend, artifact, settings, options))
    baseline = {r["batch"]: r["median_ms"] for r in reversed(results)}  # the first row of each batch size
    for r in results:
        r["speedup_vs_first"] = baseline[r["batch"]] / r["median_ms"] if r["median_ms"] else float("inf")
    processing = bench_processing(settings.height, settings.width, results[0]["num_classes"], crf=settings.crf,
                                  manifest=manifests[0])
    predictions = {}
    for artifact, manifest in zip(artifacts, manifests):
        predictions[str(artifact)] = _prediction_of(manifest)
        # Each artifact's own host post-processing: a labels artifact beside a logits one has none.
        if str(artifact) == str(artifacts[0]):
            predictions[str(artifact)]["postprocess"] = processing["postprocess"]
        else:
            classes = next(r["num_classes"] for r in results if r["artifact"] == str(artifact))
            predictions[str(artifact)]["postprocess"] = postprocess_stage(Head.from_manifest(manifest), settings.height,
                                                                          settings.width, classes)
    return {
        "schema": BENCH_SCHEMA,
        "created": utc_timestamp(),
        "artifacts": [str(a) for a in artifacts],
        "models": [(m or {}).get("model", {}).get("name") for m in manifests],
        "predictions": predictions,
        "accuracy": {str(a): _accuracy_of(m) for a, m in zip(artifacts, manifests)},
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "machine": _machine(),
        "jetson": board_state(Path(settings.jetson_root)),
        "results": results,
        "processing": processing,
    }


def _prediction_of(manifest: dict) -> dict:
    """Which output is the prediction and how it is read; the other outputs are timed with it."""
    output = manifest.get("output") or {}
    head = Head.from_manifest(manifest)
    return {"output": output.get("name"), "kind": head.kind, "head": head.name, "reading": head.describe(),
            "side_outputs": [o for o in output.get("all") or [] if o != output.get("name")],
            "normalisation_known": manifest["input"].get("normalisation_known", True)}


def _accuracy_of(manifest: dict | None) -> float | None:
    """Argmax agreement with FP32 as the artifact's own gate measured it: the precision gate's
    for FP16/INT8 artifacts, the parity gate's for FP32 exports; None when unknown."""
    if not manifest:
        return None
    for section in ("fp16", "quantization"):
        final = (manifest.get(section) or {}).get("gate", {}).get("final", {})
        if "agreement" in final:
            return float(final["agreement"])
    shapes = (manifest.get("parity") or {}).get("shapes") or []
    return min(s["argmax_agreement"] for s in shapes) if shapes else None


def _bench_in_subprocess(backend: str, artifact: str, settings: BenchSettings, options=None) -> list[dict]:
    request = json.dumps({"backend": backend, "artifact": str(artifact), "settings": asdict(settings),
                          "options": asdict(options) if options is not None else None})
    proc = subprocess.run([sys.executable, "-m", "segdeploy.bench", request], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SegdeployError(f"the {backend} benchmark of {artifact} failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> dict:
    versions = {"segdeploy": __version__, "numpy": np.__version__}
    for name in ("onnxruntime", "torch", "tensorrt"):
        module = sys.modules.get(name)
        if module is None:
            try:
                versions[name] = version(name)
            except Exception:
                continue
        else:
            versions[name] = module.__version__
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "versions": versions}
