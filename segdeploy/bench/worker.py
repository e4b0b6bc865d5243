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
from ..errors import BadInputError, SegdeployError
from ..outputs import Head
from ..parity import sample_feed
from ..preprocess import input_channels
from .jetson import PowerSampler, input_rail
from .timing import BenchSettings, latency_stats, peak_rss_mb, timed_runs, warm_up


def bench_input(artifact, options=None) -> tuple[Path, dict, int]:
    """(ONNX path, manifest, input channel count) of an artifact folder or a bare ONNX file.

    A bare file is described from its graph (``adopt.describe_onnx``): its own input name, channel
    count and output reading. Normalisation does not change timings, so it need not be known.
    """
    from ..adopt import ModelOptions, artifact_manifest

    onnx_path, manifest, _ = artifact_manifest(artifact, options or ModelOptions(), need_normalisation=False)
    channels = input_channels(manifest["input"]) or (graph_input_dims(onnx_path, manifest)[1] or 3)
    return onnx_path, manifest, int(channels)


def graph_input_dims(onnx_path, manifest: dict) -> list:
    """The image input's dims in the graph: int where fixed, None where dynamic."""
    from ..onnx_io import image_input, load_onnx, static_dims

    model = load_onnx(onnx_path, load_external_data=False)
    found = image_input(model, manifest["input"].get("name"))
    if found is None:
        raise BadInputError(f"{onnx_path}: no float32 NCHW image input")
    return static_dims(found)


def bench_backend(backend: str, artifact: str, settings: BenchSettings, options=None) -> list[dict]:
    """Load ``artifact`` on ``backend`` once and time it at each batch size (in this process).

    A bare ONNX file is fed as its graph says (input name, channel count; ``describe_onnx``); the
    prediction output is read by its head (threshold or argmax), the others are timed with it.
    Each timed run is end to end: host inputs in, every output in host memory (a GPU backend's copy
    back inside it), whatever the deployment head; each row says how many bytes that is.
    """
    onnx_path, manifest, channels = bench_input(artifact, options)
    head = Head.from_manifest(manifest)
    jetson_root = Path(settings.jetson_root)
    rows = []
    started = time.perf_counter()
    with make_runner(backend, onnx_path, manifest, threads=settings.threads) as runner:
        load_s = time.perf_counter() - started
        for batch in settings.batches:
            feed = sample_feed((batch, channels, settings.height, settings.width), manifest)
            infer = functools.partial(runner.infer, feed)
            outputs = infer()
            warmup_runs = warm_up(infer, settings.warmup)
            with PowerSampler(jetson_root) as power:
                times = timed_runs(infer, settings.iterations, settings.seconds)
            row = {
                "artifact": str(artifact),
                "precision": manifest.get("onnx", {}).get("precision", "fp32"),
                "backend": backend,
                "batch": batch,
                "load_s": load_s,
                "warmup_runs": warmup_runs,
                **output_fields(manifest, head, outputs, batch, runner.output_copy()),
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


def output_fields(manifest: dict, head: Head, outputs: dict[str, np.ndarray], batch: int, output_copy: str) -> dict:
    """A row's fields on what the run hands back: the prediction output, its head (``logits``,
    ``probabilities``, ``labels``) and dtype, the bytes of every output per batch and per image (what a
    GPU copies back: a uint8 label map is 1/(4 C) of float32 scores), and how they reach host memory."""
    name = manifest["output"]["name"]
    prediction = name if name in outputs else next(iter(outputs))
    if head.num_classes:
        classes = head.num_classes
    elif head.has_scores:
        classes = int(outputs[prediction].shape[1])
    else:  # a label map has no class axis: the manifest's classes
        classes = len(manifest.get("classes") or []) or int(outputs[prediction].max()) + 1
    per_batch = int(sum(array.nbytes for array in outputs.values()))
    return {"num_classes": classes, "prediction": prediction, "kind": head.kind, "head": head.name,
            "output_dtype": str(outputs[prediction].dtype), "outputs": list(outputs),
            "output_bytes_per_batch": per_batch, "output_bytes_per_image": per_batch / batch, "output_copy": output_copy}


def _power_summary(sampler, median_ms: float, batch: int) -> dict | None:
    rails = sampler.mean_mw()
    if not rails:
        return None
    total_rail = input_rail(rails)
    total_mw = rails[total_rail] if total_rail else sum(rails.values())
    # mW × ms = µJ; per frame of the batch, in mJ.
    return {"rails_mw": rails, "total_rail": total_rail, "total_mw": total_mw,
            "energy_mj_per_frame": total_mw * median_ms / batch / 1e3, "samples": len(sampler.samples)}


def options_from_json(data: dict | None):
    """The ``ModelOptions`` a request carries (JSON lists back to tuples)."""
    from ..adopt import ModelOptions

    data = {k: (tuple(v) if isinstance(v, list) else v) for k, v in (data or {}).items()}
    return ModelOptions(**data)


def main(request_json: str, bench=bench_backend) -> None:
    """Benchmark the request's backend and artifact with ``bench`` (``bench_backend``'s signature); print the
    rows as one JSON line (exit code of a SegdeployError on failure)."""
    request = json.loads(request_json)
    settings = request["settings"]
    settings["batches"] = tuple(settings["batches"])
    try:
        rows = bench(request["backend"], request["artifact"], BenchSettings(**settings),
                     options_from_json(request.get("options")))
    except SegdeployError as exc:
        print(f"{exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(json.dumps(rows))
