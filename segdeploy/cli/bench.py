from __future__ import annotations

import click

from ..backend.base import BACKENDS
from ..bench.report import compare_rows, load_report, print_compare, print_table, write_plots
from ..bench.run import bench_input, graph_input_dims, run_bench, settle_settings
from ..bench.timing import BenchSettings
from ..fileio import write_json
from .common import echo_json, json_option, model_options, model_options_from, progress_status


def _backend_list(ctx, param, value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if not names or unknown:
        raise click.BadParameter(f"unknown backend(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(BACKENDS)}")
    return names


def _batch_list(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        batches = tuple(int(v) for v in value.split(","))
    except ValueError:
        batches = ()
    if not batches or min(batches) < 1:
        raise click.BadParameter(f"expected positive integers separated by commas, got {value!r}")
    return batches


def _warmup(ctx, param, value: str) -> int | None:
    if value == "auto":
        return None
    if value.isdigit():
        return int(value)
    raise click.BadParameter(f"expected a number of runs or 'auto', got {value!r}")


@click.command()
@click.argument("artifacts", nargs=-1, type=click.Path())
@click.option("--backends", default="ort", show_default=True, callback=_backend_list,
              help="Comma-separated backends: ort, ort-cuda, torch, torch-cuda, torch-cuda-fp16, torch-cuda-graph, trt, "
                   "triton (a running Triton server, timed from the client side: --triton-url).")
@click.option("--batch", "batches", callback=_batch_list,
              help="Batch size, or several for a throughput sweep (1,2,4,8).  [default: the graph's fixed batch, else 1]")
@click.option("--input-size", nargs=2, type=click.IntRange(1), metavar="H W",
              help="Input shape. Default: the manifest's export shape, else the graph's fixed size.")
@click.option("--warmup", default="3", show_default=True, callback=_warmup,
              help="Untimed runs first, or 'auto': until two rounds' median latencies agree within 5%.")
@click.option("--iterations", type=click.IntRange(1), default=20, show_default=True, help="Timed runs per backend and batch.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), help="Time budget per backend and batch instead of --iterations.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads per backend. Default: each framework's own.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Also write the JSON result to this file.")
@click.option("--plots", type=click.Path(file_okay=False), help="Write latency.png (and accuracy_vs_latency.png) into this folder.")
@click.option("--compare", nargs=2, type=click.Path(dir_okay=False), metavar="BEFORE.json AFTER.json",
              help="Compare two saved runs (two machines, two builds) instead of benchmarking.")
@click.option("--crf", is_flag=True, help="Also time the dense CRF as a post-processing step (CPU kernel).")
@click.option("--triton-url", default="http://127.0.0.1:8000", show_default=True,
              help="--backends triton: the server, http://HOST:PORT or grpc://HOST:PORT.")
@click.option("--triton-model", metavar="NAME",
              help="--backends triton: the served model. Default: the artifact's name, as `segdeploy serve triton` names it.")
@click.option("--concurrency", "concurrency", callback=_batch_list, metavar="N[,N...]",
              help="--backends triton: concurrent clients, several for a sweep (1,2,4,8).  [default: 1,4]")
@click.option("--jetson-root", default="/", hidden=True, help="Root of the sysfs tree read for Jetson power rails.")
@json_option
@lambda command: model_options(command, skip=("size", "classes_file"))
def bench(artifacts, backends, batches, input_size, warmup, iterations, seconds, threads, output, plots, compare,
          crf, triton_url, triton_model, concurrency, jetson_root, as_json, **model_params):
    """Latency, throughput and peak memory of ARTIFACTS on several backends, side by side.

    Each ARTIFACT is an export folder (model.onnx + manifest.json) or an ONNX file; give
    several (FP32, FP16, INT8) to compare precisions. A bare ONNX file of your own is fed as
    its graph says (input name, channels, fixed batch and size); its first output is read as
    the prediction (argmax, or a threshold for one channel), the others are timed with it. Every artifact/backend pair runs in its
    own process on the same inputs. The model figures are end to end: inputs from host
    memory, every output back in host memory (a GPU's device-to-host copy is inside the
    timed run); each row gives the artifact's deployment head and its output bytes per
    image, so the small copy of a --head labels artifact (uint8 class ids) shows. They
    exclude pre- and post-processing, which are timed apart (a labels head needs no
    post-processing: none). Ratios are of medians measured in this one run. On a GPU, the
    torch-cuda backends also report GPU time (CUDA events) and peak GPU memory; on a Jetson,
    power per rail and energy per frame, the power mode and thermal throttling.

    \b
    Examples:
      segdeploy bench artifacts/deeplabv3plus --backends torch,ort
      segdeploy bench fp32/ fp16/ int8/ --batch 1,4 --plots plots -o bench.json
      segdeploy bench out/ out_labels/ --backends trt --batch 8   # logits vs --head labels
      segdeploy bench model.onnx --input-size 720 1280 --seconds 10 --json
      segdeploy bench artifacts/deeplabv3plus --crf          # + dense CRF post-processing
      segdeploy bench artifacts/deeplabv3plus --backends ort,triton --triton-url grpc://127.0.0.1:8001 \
          --concurrency 1,8 --batch 1          # a running `segdeploy serve triton` repository
      segdeploy bench --compare desktop.json jetson.json
    """
    if compare:
        if artifacts:
            raise click.UsageError("give either ARTIFACTS to benchmark or --compare BEFORE.json AFTER.json")
        rows = compare_rows(load_report(compare[0]), load_report(compare[1]))
        echo_json(rows) if as_json else print_compare(*compare, rows)
        return
    if not artifacts:
        raise click.UsageError("give at least one ARTIFACT (an export folder or an ONNX file)")
    options = model_options_from(model_params)
    triton = _triton_settings(triton_url, triton_model, concurrency) if "triton" in backends else {}
    report = _run(artifacts, backends, batches, input_size, warmup, iterations, seconds, threads, crf, jetson_root, as_json,
                  options, triton)
    if output:
        write_json(output, report)
    written = write_plots(report, plots) if plots else []
    if as_json:
        echo_json(report)
        return
    print_table(report)
    for path in written:
        click.echo(f"wrote {path}")


def _triton_settings(url: str, model: str | None, concurrency: tuple[int, ...] | None) -> dict:
    """``BenchSettings.extra`` for the triton backend (read by segdeploy/bench/triton.py); a bad URL is exit 2 here."""
    from ..backend.triton.runner import parse_url
    from ..bench.triton import DEFAULT_CONCURRENCY

    return {"triton_url": str(parse_url(url)), "triton_model": model, "concurrency": list(concurrency or DEFAULT_CONCURRENCY)}


def _run(artifacts, backends, batches, input_size, warmup, iterations, seconds, threads, crf, jetson_root, quiet, options,
         extra=None):
    onnx_path, manifest, _ = bench_input(artifacts[0], options)
    if input_size:
        height, width = input_size
    elif None not in (manifest["input"].get("size") or [None]):
        height, width = manifest["input"]["size"]
    else:
        dims = graph_input_dims(onnx_path, manifest)
        raise click.UsageError(f"{artifacts[0]}: input {manifest['input'].get('name')!r} has dynamic dimensions "
                               f"{['?' if d is None else d for d in dims]}: give --input-size H W")
    settings = BenchSettings(batches=batches or (1,), height=height, width=width, warmup=warmup, iterations=iterations,
                             seconds=seconds, threads=threads, jetson_root=jetson_root, crf=crf, extra=extra or {})
    settings = settle_settings(list(artifacts), settings, options, batches_given=batches is not None,
                               size_given=bool(input_size))
    with progress_status(not quiet) as progress:
        return run_bench(list(artifacts), backends, settings, progress=progress, options=options)
