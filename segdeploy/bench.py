"""Latency, throughput and memory of one artifact on several backends, side by side in one run.

Each backend runs in its own subprocess (``python -m segdeploy.bench``): its peak resident
memory is then its own, and one framework's threads or allocator cannot slow the next.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from .errors import SegdeployError

BENCH_SCHEMA = "segdeploy.bench/1"


@dataclass(frozen=True)
class BenchSettings:
    batch: int = 1
    height: int = 512
    width: int = 512
    warmup: int = 3
    iterations: int = 20
    #: When set, run for this many seconds instead of a fixed number of iterations.
    seconds: float | None = None
    threads: int | None = None


def latency_stats(times_s: list[float], batch: int) -> dict:
    ms = np.asarray(times_s) * 1e3
    median = float(np.median(ms))
    return {
        "iterations": int(ms.size),
        "median_ms": median,
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std()),
        "min_ms": float(ms.min()),
        # Coefficient of variation: above ~10% the machine was too busy for fine comparisons.
        "cv": float(ms.std() / ms.mean()) if ms.mean() > 0 else 0.0,
        "throughput_ips": batch * 1e3 / median if median > 0 else float("inf"),
    }


def time_calls(fn, settings: BenchSettings) -> list[float]:
    for _ in range(settings.warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + settings.seconds if settings.seconds else None
    while True:
        if deadline is None and len(times) >= settings.iterations:
            break
        # A time budget still takes a few samples, so that percentiles mean something.
        if deadline is not None and time.perf_counter() >= deadline and len(times) >= 3:
            break
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def bench_backend(backend: str, artifact: str, settings: BenchSettings) -> dict:
    """Load ``artifact`` on ``backend`` and time ``infer`` (this process)."""
    from .backend.base import make_runner
    from .manifest import resolve_artifact
    from .parity import sample_images
    from .preprocess import input_spec as default_input_spec

    onnx_path, manifest = resolve_artifact(artifact)
    spec_in = manifest["input"] if manifest else default_input_spec(settings.height, settings.width)
    feed = {spec_in["name"]: sample_images((settings.batch, 3, settings.height, settings.width), spec_in)}
    started = time.perf_counter()
    with make_runner(backend, onnx_path, manifest, threads=settings.threads) as runner:
        load_s = time.perf_counter() - started
        first_output = next(iter(runner.infer(feed).values()))
        times = time_calls(lambda: runner.infer(feed), settings)
    return {"backend": backend, "load_s": load_s, "num_classes": int(first_output.shape[1]),
            **latency_stats(times, settings.batch), "peak_rss_mb": peak_rss_mb()}


def bench_processing(settings: BenchSettings, num_classes: int, source_hw=(720, 1280)) -> dict:
    """Pre-processing (resize a camera frame + normalise) and post-processing (argmax to labels), numpy on the CPU."""
    from .preprocess import input_spec, normalize, resize

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(*source_hw, 3), dtype=np.uint8)
    spec_in = input_spec(settings.height, settings.width)
    logits = rng.standard_normal((settings.batch, num_classes, settings.height, settings.width), dtype=np.float32)
    quick = BenchSettings(warmup=1, iterations=10)
    pre = time_calls(lambda: normalize(np.stack([resize(frame, settings.height, settings.width)] * settings.batch), spec_in), quick)
    post = time_calls(lambda: logits.argmax(axis=1).astype(np.uint8), quick)
    return {
        "preprocess": {"what": f"resize {source_hw[0]}x{source_hw[1]} uint8 -> normalised float32 NCHW", **latency_stats(pre, settings.batch)},
        "postprocess": {"what": "argmax over classes -> uint8 labels", **latency_stats(post, settings.batch)},
    }


def run_bench(artifact: str, backends: list[str], settings: BenchSettings, progress=lambda message: None) -> dict:
    """Benchmark every backend in its own subprocess; return the JSON document (schema ``segdeploy.bench/1``)."""
    from .manifest import resolve_artifact

    _, manifest = resolve_artifact(artifact)  # a bad path fails here, before any subprocess
    results = []
    for backend in backends:
        progress(f"benchmarking {backend}")
        results.append(_bench_in_subprocess(backend, artifact, settings))
    num_classes = results[0]["num_classes"]
    baseline = results[0]["median_ms"]
    for r in results:
        r["speedup_vs_first"] = baseline / r["median_ms"] if r["median_ms"] else float("inf")
    return {
        "schema": BENCH_SCHEMA,
        "artifact": str(artifact),
        "model": (manifest or {}).get("model", {}).get("name"),
        "settings": asdict(settings),
        "machine": _machine(),
        "results": results,
        "processing": bench_processing(settings, num_classes),
    }


def _bench_in_subprocess(backend: str, artifact: str, settings: BenchSettings) -> dict:
    request = json.dumps({"backend": backend, "artifact": str(artifact), "settings": asdict(settings)})
    proc = subprocess.run([sys.executable, "-m", "segdeploy.bench", request], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SegdeployError(f"the {backend} benchmark failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> dict:
    import os
    import platform

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def _worker(request_json: str) -> None:
    from .errors import SegdeployError as Expected

    request = json.loads(request_json)
    try:
        result = bench_backend(request["backend"], request["artifact"], BenchSettings(**request["settings"]))
    except Expected as exc:
        print(f"{exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(json.dumps(result))


if __name__ == "__main__":
    _worker(sys.argv[1])
