"""Latency, throughput and memory of artifacts on several backends, side by side in one run.

Each (artifact, backend) pair runs in its own subprocess (``python -m segdeploy.bench``): its
peak resident memory is then its own, and one framework's threads or allocator cannot slow the
next. The JSON document it produces is versioned (``schemas/bench.schema.json``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import SegdeployError

BENCH_SCHEMA = "segdeploy.bench/1"
SCHEMA_FILE = Path(__file__).parent / "schemas" / "bench.schema.json"
#: Warm-up "auto": runs in rounds of this many until two rounds' medians agree within STABLE_RATIO.
WARMUP_ROUND = 3
STABLE_RATIO = 0.05
MAX_WARMUP_RUNS = 60
NOISY_CV = 0.10


@dataclass(frozen=True)
class BenchSettings:
    batches: tuple[int, ...] = (1,)
    height: int = 512
    width: int = 512
    #: Untimed runs first; None: until latency is stable (see WARMUP_ROUND).
    warmup: int | None = 3
    iterations: int = 20
    #: When set, run for this many seconds instead of a fixed number of iterations.
    seconds: float | None = None
    threads: int | None = None
    #: Root of the sysfs tree read for Jetson power and thermal state.
    jetson_root: str = "/"
    #: Also time the dense CRF (CPU kernel, DeepLab's parameters) as a post-processing step.
    crf: bool = False
    extra: dict = field(default_factory=dict)


def latency_stats(times_ms, batch: int) -> dict:
    ms = np.asarray(times_ms, dtype=np.float64)
    median = float(np.median(ms))
    mean = float(ms.mean())
    return {
        "iterations": int(ms.size),
        "median_ms": median,
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": mean,
        "std_ms": float(ms.std()),
        "min_ms": float(ms.min()),
        # Coefficient of variation: above NOISY_CV the machine was too busy for fine comparisons.
        "cv": float(ms.std() / mean) if mean > 0 else 0.0,
        "throughput_ips": batch * 1e3 / median if median > 0 else float("inf"),
    }


def warm_up(fn, warmup: int | None) -> int:
    """Run ``fn`` untimed; return how many runs it took."""
    if warmup is not None:
        for _ in range(warmup):
            fn()
        return warmup
    previous, runs = None, 0
    while runs < MAX_WARMUP_RUNS:
        current = float(np.median(timed_runs(fn, WARMUP_ROUND)))
        runs += WARMUP_ROUND
        if previous is not None and abs(current - previous) <= STABLE_RATIO * previous:
            break
        previous = current
    return runs


def timed_runs(fn, count: int | None = None, seconds: float | None = None) -> list[float]:
    """Milliseconds of each call: ``count`` calls, or as many as fit in ``seconds`` (at least 3)."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds if seconds else None
    while (len(times) < count) if deadline is None else (time.perf_counter() < deadline or len(times) < 3):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return times


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def bench_backend(backend: str, artifact: str, settings: BenchSettings) -> list[dict]:
    """Load ``artifact`` on ``backend`` once and time it at each batch size (in this process)."""
    from . import jetson
    from .backend.base import make_runner
    from .manifest import resolve_artifact
    from .parity import sample_feed
    from .preprocess import input_spec as default_input_spec

    onnx_path, manifest = resolve_artifact(artifact)
    spec_in = manifest["input"] if manifest else default_input_spec(settings.height, settings.width)
    jetson_root = Path(settings.jetson_root)
    rows = []
    started = time.perf_counter()
    with make_runner(backend, onnx_path, manifest, threads=settings.threads) as runner:
        load_s = time.perf_counter() - started
        for batch in settings.batches:
            feed = sample_feed((batch, 3, settings.height, settings.width), manifest or {"input": spec_in})
            first_output = next(iter(runner.infer(feed).values()))
            warmup_runs = warm_up(lambda: runner.infer(feed), settings.warmup)
            with jetson.PowerSampler(jetson_root) as power:
                times = timed_runs(lambda: runner.infer(feed), settings.iterations, settings.seconds)
            row = {
                "artifact": str(artifact),
                "precision": (manifest or {}).get("onnx", {}).get("precision", "fp32"),
                "backend": backend,
                "batch": batch,
                "load_s": load_s,
                "warmup_runs": warmup_runs,
                "num_classes": int(first_output.shape[1]),
                **latency_stats(times, batch),
                "samples_ms": times,
                "gpu": None,
                "power": _power_summary(power, float(np.median(times)), batch),
            }
            gpu_times = runner.time_on_device(feed, len(times))
            if gpu_times is not None:
                row["gpu"] = {**latency_stats(gpu_times, batch), "peak_memory_mb": runner.peak_device_memory_mb()}
            row["peak_rss_mb"] = peak_rss_mb()
            rows.append(row)
    return rows


def _power_summary(sampler, median_ms: float, batch: int) -> dict | None:
    from .jetson import input_rail

    rails = sampler.mean_mw()
    if not rails:
        return None
    total_rail = input_rail(rails)
    total_mw = rails[total_rail] if total_rail else sum(rails.values())
    # mW × ms = µJ; per frame of the batch, in mJ.
    return {"rails_mw": rails, "total_rail": total_rail, "total_mw": total_mw,
            "energy_mj_per_frame": total_mw * median_ms / batch / 1e3, "samples": len(sampler.samples)}


def bench_processing(height: int, width: int, num_classes: int, source_hw=(720, 1280), crf: bool = False) -> dict:
    """Pre-processing (resize a camera frame + normalise) and post-processing (argmax to labels,
    optionally the dense CRF), on the CPU."""
    from .preprocess import input_spec, normalize, resize

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(*source_hw, 3), dtype=np.uint8)
    spec_in = input_spec(height, width)
    logits = rng.standard_normal((1, num_classes, height, width), dtype=np.float32)
    pre = lambda: normalize(resize(frame, height, width), spec_in)  # noqa: E731
    post = lambda: logits.argmax(axis=1).astype(np.uint8)  # noqa: E731
    warm_up(pre, 1)
    warm_up(post, 1)
    stages = {
        "preprocess": {"what": f"resize {source_hw[0]}x{source_hw[1]} uint8 -> normalised float32 NCHW", **latency_stats(timed_runs(pre, 10), 1)},
        "postprocess": {"what": "argmax over classes -> uint8 labels", **latency_stats(timed_runs(post, 10), 1)},
    }
    if crf:
        from .crf import CRFParams, dense_crf
        from .parity import sample_pictures

        picture = sample_pictures((1, 3, height, width))
        refine = lambda: dense_crf(logits, picture, output="labels")  # noqa: E731
        warm_up(refine, 1)
        params = CRFParams()
        stages["crf"] = {"what": f"dense CRF on the CPU ({params.iterations} iterations, DeepLab v2 parameters)",
                         **latency_stats(timed_runs(refine, 3), 1)}
    return stages


def run_bench(artifacts: list[str], backends: list[str], settings: BenchSettings, progress=lambda message: None) -> dict:
    """Benchmark every (artifact, backend) in its own subprocess; return the ``segdeploy.bench/1`` document."""
    from . import jetson
    from .manifest import resolve_artifact

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
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artifacts": [str(a) for a in artifacts],
        "models": [(m or {}).get("model", {}).get("name") for m in manifests],
        "accuracy": {str(a): _accuracy_of(m) for a, m in zip(artifacts, manifests)},
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "machine": _machine(),
        "jetson": jetson.board_state(Path(settings.jetson_root)),
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
    from . import __version__

    versions = {"segdeploy": __version__, "numpy": np.__version__}
    for name in ("onnxruntime", "torch", "tensorrt"):
        module = sys.modules.get(name)
        if module is None:
            try:
                from importlib.metadata import version

                versions[name] = version(name)
            except Exception:
                continue
        else:
            versions[name] = module.__version__
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "versions": versions}


def _worker(request_json: str) -> None:
    request = json.loads(request_json)
    settings = request["settings"]
    settings["batches"] = tuple(settings["batches"])
    try:
        rows = bench_backend(request["backend"], request["artifact"], BenchSettings(**settings))
    except SegdeployError as exc:
        print(f"{exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(json.dumps(rows))


if __name__ == "__main__":
    _worker(sys.argv[1])
