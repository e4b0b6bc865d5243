"""Serving benchmark: a real Triton server (the tritonserver nvidia-pytriton bundles) on a repository
`segdeploy serve triton` writes from an artifact, against single-process ONNX Runtime (segdeploy's
OnnxrtRunner in this process) on the same machine and the same inputs, alternating round by round.

The server's model step (float32 NCHW in, scores out: what `segdeploy bench` times on every backend)
is called by 1, 2, 4, 8 and 16 concurrent clients (tritonclient, HTTP by default); ONNX Runtime runs
the same batch-1 inputs one after another, in a block just before each Triton block (so that each
ratio compares two moments of the same machine load; the ratio reported is the median of these
paired ratios). For each: requests, failures, p50/p99 latency per request,
throughput (images answered per second of wall time, all clients together), and from the server's
statistics how many executions ran a batch > 1 (dynamic batching). Ratios: concurrency 8 vs 1, and
concurrency 8 vs single-process ONNX Runtime (the issue's target: not below 0.90).

Default artifact: make demo's artifacts/deeplabv3plus when it exists, else the trained test fixture
(exported on first use). The bundled server has only the Python backend, so the model step is ONNX
Runtime inside Triton's Python backend (`--model-step python`).

    PYTHONPATH=. python benchmarks/serve.py [--artifact DIR] [--size 256 256] [--rounds 3] [--readme]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from readme_blocks import provenance, replace_block  # noqa: E402  (beside this script)
from triton_harness import skip_reason, triton_server  # noqa: E402  (tests/triton_harness.py: the bundled server)

from segdeploy.backend.base import make_runner  # noqa: E402
from segdeploy.backend.triton.runner import TritonRunner  # noqa: E402
from segdeploy.bench.timing import BenchSettings, latency_stats  # noqa: E402
from segdeploy.bench.triton import batching_delta, concurrent_runs  # noqa: E402
from segdeploy.bench.worker import bench_input  # noqa: E402
from segdeploy.parity import sample_feed  # noqa: E402
from segdeploy.serve.triton import TritonOptions, write_repository  # noqa: E402

LEVELS = (1, 2, 4, 8, 16)
DEMO_ARTIFACT = ROOT / "artifacts" / "deeplabv3plus"


def default_artifact(work: Path) -> Path:
    """make demo's artifact, else the trained fixture exported into ``work`` (cached training, ~1 min the first time)."""
    if (DEMO_ARTIFACT / "manifest.json").is_file():
        return DEMO_ARTIFACT
    from segdeploy.fixtures.artifact import export_fixture_artifact
    from segdeploy.fixtures.train import train_fixture_model

    fixture = train_fixture_model(cache_dir=ROOT / ".pytest_cache" / "d" / "segdeploy-fixture")
    return export_fixture_artifact(fixture, work / "fixture")


def time_ort(runner, feed: dict, requests: int) -> tuple[list[float], float]:
    """Latencies (ms) of ``requests`` calls one after another, and their wall time (s)."""
    times = []
    began = time.perf_counter()
    for _ in range(requests):
        sent = time.perf_counter()
        runner.infer(feed)
        times.append((time.perf_counter() - sent) * 1e3)
    return times, time.perf_counter() - began


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", help="artifact folder (default: artifacts/deeplabv3plus, else the trained fixture)")
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="input size (default: the manifest's)")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="client concurrencies")
    parser.add_argument("--requests", type=int, default=4, help="timed requests per client per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each times ORT, then every concurrency")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--model-step", choices=("python", "onnxruntime"), default="python")
    parser.add_argument("--max-batch", type=int, default=8, help="the dynamic batcher's largest batch")
    parser.add_argument("--queue-delay-us", type=int, help="dynamic batching queue delay (default: the writer's)")
    parser.add_argument("--preferred", default="", help="preferred batch sizes, e.g. 4,8 (default: none)")
    parser.add_argument("--instances", type=int, default=1, help="instances of the model step")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads, server and in-process (0: its default)")
    parser.add_argument("--readme", action="store_true", help="write the serve-table block from this run")
    args = parser.parse_args(argv)
    if (reason := skip_reason()) is not None:
        sys.exit(f"the bundled Triton server cannot run here: {reason}")
    levels = tuple(int(v) for v in args.levels.split(","))

    with tempfile.TemporaryDirectory(prefix="segdeploy-serve-bench-") as work:
        work = Path(work)
        artifact = Path(args.artifact) if args.artifact else default_artifact(work)
        onnx_path, manifest, channels = bench_input(artifact)
        height, width = args.size or manifest["input"]["size"]
        options = TritonOptions(model_step=args.model_step, max_batch_size=args.max_batch, instances=args.instances,
                                threads=args.threads, pipeline=False,
                                preferred_batch_sizes=tuple(int(v) for v in args.preferred.split(",") if v))
        if args.queue_delay_us is not None:
            options = replace(options, queue_delay_us=args.queue_delay_us)
        repo = write_repository([artifact], work / "repo", options)
        model = repo.models[0].model
        feed = sample_feed((1, channels, height, width), manifest)
        settings = BenchSettings(warmup=1, iterations=args.requests)
        ort_runs, ort_wall = [], []
        paired = {c: [] for c in levels}  # Triton's throughput / the ORT block just before it, block by block
        runs = {c: [] for c in levels}
        walls = {c: [] for c in levels}
        batching = {c: [] for c in levels}
        load = [os.getloadavg()[0]]
        with triton_server(work / "repo", timeout=300) as server, \
                make_runner("ort", onnx_path, manifest, threads=args.threads or None) as ort:
            url = f"{args.protocol}://{server.http_url if args.protocol == 'http' else server.grpc_url}"
            client = TritonRunner.from_artifact(onnx_path, manifest, url=url, model=model)
            with client:
                ort.infer(feed)  # warm-up
                for round_index in range(args.rounds):
                    for c in levels:
                        # ORT just before each Triton block: both see the same moment of a shared machine's load
                        times, wall = time_ort(ort, feed, args.requests)
                        ort_runs += times
                        ort_wall.append(len(times) / wall)
                        before = client.statistics()
                        times, wall, _ = concurrent_runs(client, feed, c, settings)
                        batching[c].append(batching_delta(before, client.statistics()))
                        runs[c] += times
                        walls[c].append(len(times) / wall)
                        paired[c].append(walls[c][-1] / ort_wall[-1])
                    load.append(os.getloadavg()[0])
                    print(f"round {round_index + 1}/{args.rounds}, images/s (Triton / the ORT block before it): "
                          + ", ".join(f"c{c} {walls[c][-1]:.2f}/{ort_wall[-len(levels) + i]:.2f}" for i, c in enumerate(levels)),
                          flush=True)
            server_log_errors = [line for line in server.log().splitlines() if " E" in line[:2] or "error" in line.lower()]
    report = {"artifact": str(artifact), "model": manifest.get("model", {}).get("name"), "size": [height, width],
              "protocol": args.protocol, "model_step": args.model_step, "options": options, "cores": os.cpu_count(),
              "load": load, "ort": {**latency_stats(ort_runs, 1), "throughput_ips": statistics.median(ort_wall)},
              "levels": {c: {**latency_stats(runs[c], 1), "throughput_ips": statistics.median(walls[c]),
                             "vs_ort": statistics.median(paired[c]), "vs_ort_range": [min(paired[c]), max(paired[c])],
                             "requests": len(runs[c]), "batching": _sum_batching(batching[c])} for c in levels},
              "server_errors": server_log_errors, "argv": list(sys.argv[1:] if argv is None else argv)}
    table = readme_table(report, args)
    print(table)
    for line in server_log_errors:  # the run succeeded, but the server complained: show it
        print(f"server log: {line}", file=sys.stderr)
    if args.readme:
        print(f"written to {replace_block('serve-table', table)}", file=sys.stderr)
    return 0


def _sum_batching(rounds: list[dict]) -> dict:
    sizes: dict[str, int] = {}
    for r in rounds:
        for size, count in r["executions_by_batch_size"].items():
            sizes[size] = sizes.get(size, 0) + count
    return {"images": sum(r["images"] for r in rounds), "executions": sum(r["executions"] for r in rounds),
            "executions_by_batch_size": dict(sorted(sizes.items(), key=lambda kv: int(kv[0]))),
            "batches_over_1": sum(r["batches_over_1"] for r in rounds)}


def readme_table(report: dict, args) -> str:
    """The serve-table block: one row per concurrency and ONNX Runtime in-process, ratios within this run."""
    o, ort, levels = report["options"], report["ort"], report["levels"]
    h, w = report["size"]
    lines = [f"{report['model']} ({Path(report['artifact']).name}) at {h}×{w}, batch-1 requests of float32 NCHW → scores; "
             f"Triton's bundled server ({report['model_step']} model step, {o.instances} instance, ONNX Runtime threads "
             f"{o.threads or 'default'}, max batch {o.max_batch_size}, queue delay {o.queue_delay_us} µs"
             + (f", preferred {list(o.preferred_batch_sizes)}" if o.preferred_batch_sizes else "")
             + f") over {report['protocol'].upper()} vs ONNX Runtime in one process; {args.rounds} alternating rounds, "
             f"{report['cores']} cores (load average {min(report['load']):.1f}–{max(report['load']):.1f}); a failed request stops "
             "the run, so every request in the table was answered; executions include each client's one warm-up request:",
             "",
             "| client | requests | failed | p50 ms | p99 ms | images/s | vs 1 client | vs ORT in-process, paired "
             "(median, range) | executions with batch > 1 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
             f"| ONNX Runtime, in-process | {ort['iterations']} | 0 | {ort['median_ms']:.1f} | {ort['p99_ms']:.1f} | "
             f"{ort['throughput_ips']:.2f} | — | 1.00× | — |"]
    first = levels[min(levels)]["throughput_ips"]
    for c, row in levels.items():
        b = row["batching"]
        sizes = ", ".join(f"{n}×b{s}" for s, n in b["executions_by_batch_size"].items())
        lines.append(f"| Triton, {c} concurrent | {row['requests']} | 0 | {row['median_ms']:.1f} | {row['p99_ms']:.1f} | "
                     f"{row['throughput_ips']:.2f} | {row['throughput_ips'] / first:.2f}× | "
                     f"**{row['vs_ort']:.2f}×** ({row['vs_ort_range'][0]:.2f}–{row['vs_ort_range'][1]:.2f}) | "
                     f"{b['batches_over_1']} of {b['executions']} ({sizes}) |")
    if 8 in levels:
        ratio = levels[8]["vs_ort"]
        lines += ["", f"Concurrency 8 vs 1: **{levels[8]['throughput_ips'] / first:.2f}×**; concurrency 8 vs single-process "
                      f"ONNX Runtime: **{ratio:.2f}×** (target ≥ 0.90: {'met' if ratio >= 0.9 else 'NOT met'})."]
    lines += ["", provenance(" ".join(["python benchmarks/serve.py", *report["argv"]]))]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
