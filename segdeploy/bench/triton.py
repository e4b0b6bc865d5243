"""A running Triton server measured from the client side: N concurrent clients, each sending requests
one after another, at each batch size and concurrency; per-request latency percentiles, throughput
over the timed window, and the server's own count of executions (dynamic batching merges requests).

Rows are the worker's (``bench_backend``) with ``backend`` "triton", plus ``concurrency``, ``server``
(address and model) and ``batching`` (requests, executions and the batch sizes the server ran); the
throughput is images answered per second of wall time, all clients together.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from ..backend.triton.runner import TritonRunner
from ..errors import BadInputError
from ..outputs import Head
from ..parity import sample_feed
from .timing import BenchSettings, latency_stats, peak_rss_mb, warm_up
from .worker import bench_input, output_fields

#: --concurrency default: one client, then enough to let dynamic batching merge requests.
DEFAULT_CONCURRENCY = (1, 4)


def bench_triton(backend: str, artifact: str, settings: BenchSettings, options=None) -> list[dict]:
    """Time ``artifact``'s model on the server ``settings.extra`` names (``triton_url``, ``triton_model``: by
    default the name ``segdeploy serve triton`` gives it; ``concurrency``) at each batch size and concurrency,
    on the same inputs as every other backend. ``backend`` is "triton" (``worker.main``'s signature)."""
    from ..serve.triton import default_model_name

    onnx_path, manifest, channels = bench_input(artifact, options)
    head = Head.from_manifest(manifest)
    extra = settings.extra or {}
    runner = TritonRunner.from_artifact(onnx_path, manifest, url=extra.get("triton_url", "http://127.0.0.1:8000"),
                                        model=extra.get("triton_model") or default_model_name(artifact))
    levels = tuple(extra.get("concurrency") or DEFAULT_CONCURRENCY)
    rows = []
    started = time.perf_counter()
    with runner:
        connect_s = time.perf_counter() - started
        for batch in settings.batches:
            feed = sample_feed((batch, channels, settings.height, settings.width), manifest)
            outputs = runner.infer(feed)
            for concurrency in levels:
                before = runner.statistics()
                times, wall_s, warmup_runs = concurrent_runs(runner, feed, concurrency, settings)
                after = runner.statistics()
                stats = latency_stats(times, batch)
                stats["throughput_ips"] = batch * len(times) / wall_s  # all clients together, not 1 / median
                rows.append({
                    "artifact": str(artifact),
                    "precision": manifest.get("onnx", {}).get("precision", "fp32"),
                    "backend": "triton",
                    "batch": batch,
                    "concurrency": concurrency,
                    "load_s": connect_s,
                    "warmup_runs": warmup_runs,
                    **output_fields(manifest, head, outputs, batch, runner.output_copy()),
                    **stats,
                    "samples_ms": times,
                    "gpu": None,
                    "power": None,
                    "peak_rss_mb": peak_rss_mb(),
                    "server": {"url": str(runner.address), "model": runner.model},
                    "batching": batching_delta(before, after),
                })
    return rows


def concurrent_runs(runner: TritonRunner, feed: dict, concurrency: int, settings: BenchSettings):
    """Latencies (ms) of every timed request of ``concurrency`` clients, the timed window's wall time (s)
    and the warm-up runs per client. Each client warms up, then all start the timed part together:
    ``settings.iterations`` requests each, or as many as fit in ``settings.seconds``."""
    clients = [runner.clone() for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)
    latencies: list[list[float]] = [[] for _ in clients]
    warmups = [0] * concurrency
    errors: list[BaseException] = []

    def client_loop(index: int, client: TritonRunner) -> None:
        try:
            with client:
                warmups[index] = warm_up(lambda: client.infer(feed), settings.warmup)
                start.wait()
                deadline = time.perf_counter() + settings.seconds if settings.seconds else None
                mine = latencies[index]
                while (len(mine) < settings.iterations) if deadline is None else (time.perf_counter() < deadline or len(mine) < 3):
                    sent = time.perf_counter()
                    client.infer(feed)
                    mine.append((time.perf_counter() - sent) * 1e3)
        except BaseException as exc:  # reported below, after every thread has stopped
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=client_loop, args=(i, c), daemon=True) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - began
    if errors:
        error = errors[0]
        if isinstance(error, BadInputError):
            raise error
        raise BadInputError(f"{runner.address}: model {runner.model!r}: a request failed ({error})") from None
    return [t for client in latencies for t in client], wall_s, int(np.median(warmups))


def batching_delta(before: dict, after: dict) -> dict:
    """What the server ran in the timed window: requests (images), executions, and executions by batch size."""
    sizes = {size: count - before["batch_sizes"].get(size, 0) for size, count in after["batch_sizes"].items()}
    sizes = {size: count for size, count in sorted(sizes.items()) if count > 0}
    executions = after["execution_count"] - before["execution_count"]
    images = after["inference_count"] - before["inference_count"]
    return {"images": images, "executions": executions, "mean_batch": images / executions if executions else None,
            "executions_by_batch_size": {str(size): count for size, count in sizes.items()},
            "batches_over_1": sum(count for size, count in sizes.items() if size > 1)}
