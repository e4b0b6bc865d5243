from __future__ import annotations

import click

from .common import echo_json, json_option, progress_status


def _backend_list(ctx, param, value: str) -> list[str]:
    from ..backend.base import BACKENDS

    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if not names or unknown:
        raise click.BadParameter(f"unknown backend(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(BACKENDS)}")
    return names


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--backends", default="ort", show_default=True, callback=_backend_list,
              help="Comma-separated backends to compare: ort, torch (torch needs the 'export' extra).")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True)
@click.option("--input-size", nargs=2, type=click.IntRange(1), metavar="H W", help="Input shape. Default: the manifest's export shape.")
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True, help="Untimed runs first.")
@click.option("--iterations", type=click.IntRange(1), default=20, show_default=True, help="Timed runs per backend.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), help="Time budget per backend instead of --iterations.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads per backend. Default: each framework's own.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Also write the JSON result to this file.")
@json_option
def bench(artifact, backends, batch, input_size, warmup, iterations, seconds, threads, output, as_json):
    """Latency, throughput and peak memory of ARTIFACT on several backends, side by side.

    ARTIFACT is an export folder (model.onnx + manifest.json) or an ONNX file. Each backend
    runs in its own process on the same inputs; the model figures exclude pre- and
    post-processing, which are timed separately. Ratios are of medians, measured in one run.

    \b
    Examples:
      segdeploy bench artifacts/deeplabv3plus --backends torch,ort
      segdeploy bench model.onnx --input-size 720 1280 --seconds 10 --json -o bench.json
    """
    from ..bench import BenchSettings, run_bench
    from ..fileio import write_json
    from ..manifest import resolve_artifact

    _, manifest = resolve_artifact(artifact)
    if input_size:
        height, width = input_size
    elif manifest:
        height, width = manifest["input"]["size"]
    else:
        raise click.UsageError(f"{artifact} has no manifest: give --input-size H W")
    settings = BenchSettings(batch=batch, height=height, width=width, warmup=warmup, iterations=iterations,
                             seconds=seconds, threads=threads)
    with progress_status(not as_json) as progress:
        report = run_bench(artifact, backends, settings, progress=progress)
    if output:
        write_json(output, report)
    if as_json:
        echo_json(report)
    else:
        print_table(report)


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report["settings"]
    table = Table(title=f"{report.get('model') or report['artifact']} · batch {s['batch']} · {s['height']}x{s['width']}")
    for column in ("backend", "median ms", "p90 ms", "p99 ms", "mean ± std ms", "images/s", "peak RSS MB", "speed vs " + report["results"][0]["backend"]):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for r in report["results"]:
        table.add_row(r["backend"], f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['p99_ms']:.1f}",
                      f"{r['mean_ms']:.1f} ± {r['std_ms']:.1f}", f"{r['throughput_ips']:.1f}", f"{r['peak_rss_mb']:.0f}",
                      f"{r['speedup_vs_first']:.2f}x")
    for stage in ("preprocess", "postprocess"):
        p = report["processing"][stage]
        table.add_row(f"[dim]{stage}[/dim]", f"{p['median_ms']:.1f}", f"{p['p90_ms']:.1f}", f"{p['p99_ms']:.1f}",
                      f"{p['mean_ms']:.1f} ± {p['std_ms']:.1f}", "", "", "")
    console = Console(width=max(Console().width, 110))
    console.print(table)
    noisy = [r["backend"] for r in report["results"] if r["cv"] > 0.1]
    if noisy:
        console.print(f"[yellow]warning:[/yellow] noisy timings (CV > 10%) for {', '.join(noisy)}: the machine was busy; "
                      "use --iterations or --seconds for more samples")
    console.print(f"[dim]pre/post-processing (numpy, CPU) excluded from the model figures: "
                  f"{report['processing']['preprocess']['what']}; {report['processing']['postprocess']['what']}[/dim]")
