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
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .. import __version__
from ..crf import CRFParams, dense_crf
from ..errors import SegdeployError
from ..manifest import resolve_artifact, utc_timestamp
from ..parity import sample_pictures
from ..preprocess import input_spec, normalize, resize
from .jetson import board_state
from .timing import BenchSettings, latency_stats, timed_runs, warm_up

BENCH_SCHEMA = "segdeploy.bench/1"
SCHEMA_FILE = Path(__file__).parents[1] / "schemas" / "bench.schema.json"


def bench_processing(height: int, width: int, num_classes: int, source_hw=(720, 1280), crf: bool = False) -> dict:
    """Pre-processing (resize a camera frame + normalise) and post-processing (argmax to labels,
    optionally the dense CRF), on the CPU."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(*source_hw, 3), dtype=np.uint8)
    spec_in = input_spec(height, width)
    logits = rng.standard_normal((1, num_classes, height, width), dtype=np.float32)
    pre = lambda: normalize(resize(frame, height, width), spec_in)  # noqa: E731
    post = lambda: logits.argmax(axis=1).astype(np.uint8)  # noqa: E731
    warm_up(pre, 1)
    warm_up(post, 1)
    stages = {
        "preprocess": {"what": f"resize {source_hw[0]}x{source_hw[1]} uint8 -> normalised float32 NCHW",
                       **latency_stats(timed_runs(pre, 10), 1)},
        "postprocess": {"what": "argmax over classes -> uint8 labels", **latency_stats(timed_runs(post, 10), 1)},
    }
    if crf:
        picture = sample_pictures((1, 3, height, width))
        refine = lambda: dense_crf(logits, picture, output="labels")  # noqa: E731
        warm_up(refine, 1)
        params = CRFParams()
        stages["crf"] = {"what": f"dense CRF on the CPU ({params.iterations} iterations, DeepLab v2 parameters)",
                         **latency_stats(timed_runs(refine, 3), 1)}
    return stages


def run_bench(artifacts: list[str], backends: list[str], settings: BenchSettings, progress=lambda message: None) -> dict:
    """Benchmark every (artifact, backend) in its own subprocess; return the ``segdeploy.bench/1`` document."""
    manifests = [resolve_artifact(a)[1] for a in artifacts]  # a bad path fails here, before any subprocess
    results = []
    for artifact in artifacts:
        for backend in backends:
            progress(f"benchmarking {Path(artifact).name} on {backend}")
            results.extend(_bench_in_subprocess(backend, artifact, settings))
    baseline = {r["batch"]: r["median_ms"] for r in reversed(results)}  # the first row of each batch size
    for r in results:
        r["speedup_vs_first"] = baseline[r["batch"]] / r["median_ms"] if r["median_ms"] else float("inf")
    return {
        "schema": BENCH_SCHEMA,
        "created": utc_timestamp(),
        "artifacts": [str(a) for a in artifacts],
        "models": [(m or {}).get("model", {}).get("name") for m in manifests],
        "accuracy": {str(a): _accuracy_of(m) for a, m in zip(artifacts, manifests)},
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "machine": _machine(),
        "jetson": board_state(Path(settings.jetson_root)),
        "results": results,
        "processing": bench_processing(settings.height, settings.width, results[0]["num_classes"], crf=settings.crf),
    }


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


def _bench_in_subprocess(backend: str, artifact: str, settings: BenchSettings) -> list[dict]:
    request = json.dumps({"backend": backend, "artifact": str(artifact), "settings": asdict(settings)})
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
