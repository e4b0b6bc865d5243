"""The benchmark subprocess: one artifact on one backend, loaded once, timed at each batch size.

``run`` starts it as ``python -m segdeploy.bench REQUEST_JSON`` and reads the rows it prints as
one JSON line.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..backend.base import make_runner
from ..errors import SegdeployError
from ..manifest import resolve_artifact
from ..parity import sample_feed
from ..preprocess import input_spec
from .jetson import PowerSampler, input_rail
from .timing import BenchSettings, latency_stats, peak_rss_mb, timed_runs, warm_up


def bench_backend(backend: str, artifact: str, settings: BenchSettings) -> list[dict]:
    """Load ``artifact`` on ``backend`` once and time it at each batch size (in this process)."""
    onnx_path, manifest = resolve_artifact(artifact)
    spec_in = manifest["input"] if manifest else input_spec(settings.height, settings.width)
    jetson_root = Path(settings.jetson_root)
    rows = []
    started = time.perf_counter()
    with make_runner(backend, onnx_path, manifest, threads=settings.threads) as runner:
        load_s = time.perf_counter() - started
        for batch in settings.batches:
            feed = sample_feed((batch, 3, settings.height, settings.width), manifest or {"input": spec_in})
            infer = functools.partial(runner.infer, feed)
            first_output = next(iter(infer().values()))
            warmup_runs = warm_up(infer, settings.warmup)
            with PowerSampler(jetson_root) as power:
                times = timed_runs(infer, settings.iterations, settings.seconds)
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
    rails = sampler.mean_mw()
    if not rails:
        return None
    total_rail = input_rail(rails)
    total_mw = rails[total_rail] if total_rail else sum(rails.values())
    # mW × ms = µJ; per frame of the batch, in mJ.
    return {"rails_mw": rails, "total_rail": total_rail, "total_mw": total_mw,
            "energy_mj_per_frame": total_mw * median_ms / batch / 1e3, "samples": len(sampler.samples)}


def main(request_json: str) -> None:
    """Benchmark the request's backend and artifact; print the rows as one JSON line (exit code of a SegdeployError on failure)."""
    request = json.loads(request_json)
    settings = request["settings"]
    settings["batches"] = tuple(settings["batches"])
    try:
        rows = bench_backend(request["backend"], request["artifact"], BenchSettings(**settings))
    except SegdeployError as exc:
        print(f"{exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(json.dumps(rows))
