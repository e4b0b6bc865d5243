"""Presenting benchmark documents: terminal tables, side-by-side comparison, PNG plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BadInputError
from ..fileio import atomic_path
from ..optional import require
from .run import SCHEMA_FILE
from .timing import NOISY_CV


def load_report(path: str | os.PathLike) -> dict:
    """Read a ``segdeploy bench --json`` document and check it against its schema."""
    import jsonschema

    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such benchmark file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: not a readable benchmark JSON file ({exc})") from None
    try:
        jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    except jsonschema.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "(top level)"
        raise BadInputError(f"{path}: not a segdeploy benchmark result ({where}: {exc.message})") from None
    return report


def wide_console():
    """A console wide enough for the tables; piped output is not wrapped at 80 columns."""
    from rich.console import Console

    console = Console()
    return Console(width=max(console.width, 120) if console.is_terminal else 200)


def _backend_label(r: dict) -> str:
    """The backend, with the number of concurrent clients when several (a Triton server's rows)."""
    return r["backend"] + (f" ×{r['concurrency']}" if r.get("concurrency", 1) > 1 else "")


def _row_label(r: dict) -> str:
    return f"{Path(r['artifact']).name} · {_backend_label(r)}"


def print_table(report: dict) -> None:
    from rich.table import Table

    s = report["settings"]
    several_artifacts = len(report["artifacts"]) > 1
    title = f"{', '.join(filter(None, report['models'])) or report['artifacts'][0]} · {s['height']}x{s['width']}"
    table = Table(title=title)
    first = report["results"][0]
    baseline = _row_label(first) if several_artifacts else _backend_label(first)
    columns = ["artifact · backend" if several_artifacts else "backend", "batch", "head", "output/image", "median ms",
               "p90 ms", "p99 ms", "mean ± std ms", "images/s", "GPU ms", "peak RSS MB", "mJ/frame", f"speed vs {baseline}"]
    for column in columns:
        table.add_column(column, justify="left" if column.startswith(("backend", "artifact", "head")) else "right",
                         no_wrap=True)
    for r in report["results"]:
        gpu, power = r.get("gpu"), r.get("power")
        output = f"{format_bytes(r['output_bytes_per_image'])} {r['output_dtype']}" if "output_dtype" in r else "?"
        table.add_row(_row_label(r) if several_artifacts else _backend_label(r), str(r["batch"]), r.get("head", "?"), output,
                      f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['mean_ms']:.2f} ± {r['std_ms']:.2f}",
                      f"{r['throughput_ips']:.1f}", f"{gpu['median_ms']:.2f}" if gpu else "–", f"{r['peak_rss_mb']:.0f}",
                      f"{power['energy_mj_per_frame']:.1f}" if power else "–", f"{r['speedup_vs_first']:.2f}x")
    for stage, p in report["processing"].items():
        if p.get("skipped"):
            table.add_row(f"[dim]{stage}[/dim]", "1", "", "", "none", "–", "–", "–", "", "", "", "", "")
        else:
            table.add_row(f"[dim]{stage}[/dim]", "1", "", "", f"{p['median_ms']:.2f}", f"{p['p90_ms']:.2f}",
                          f"{p['p99_ms']:.2f}", f"{p['mean_ms']:.2f} ± {p['std_ms']:.2f}", "", "", "", "", "")
    console = wide_console()
    console.print(table)
    noisy = sorted({_row_label(r) for r in report["results"] if r["cv"] > NOISY_CV})
    if noisy:
        console.print(f"[yellow]warning:[/yellow] noisy timings (CV > 10%) for {', '.join(noisy)}: the machine was busy; "
                      "use --iterations, --seconds or --warmup auto")
    jetson = report.get("jetson")
    if jetson:
        console.print(f"Jetson {jetson.get('l4t')} · power mode {jetson.get('power_mode')}"
                      + (f" · [red]THROTTLED[/red] ({', '.join(jetson['throttled'])})" if jetson.get("throttled") else ""))
    for artifact, prediction in (report.get("predictions") or {}).items():
        side = prediction.get("side_outputs") or []
        post = prediction.get("postprocess")
        console.print(f"{Path(artifact).name}: prediction output {prediction['output']!r} ({prediction['reading']})"
                      + (f"; side outputs {', '.join(side)} are computed and timed with it" if side else "")
                      + (f"; host post-processing: {_stage_text(post)}" if post else ""))
    copies = {_backend_label(r): r["output_copy"] for r in report["results"] if "output_copy" in r}
    console.print("[dim]model figures are end to end, host inputs to every output in host memory; output copy: "
                  + "; ".join(f"{backend}: {how}" for backend, how in copies.items()) + "[/dim]")
    console.print("[dim]they exclude pre/post-processing (CPU), timed apart: "
                  + "; ".join(f"{stage}: {p['what']}" for stage, p in report["processing"].items()) + "[/dim]")


def _stage_text(stage: dict) -> str:
    return stage["what"] if stage.get("skipped") else f"{stage['what']}, {stage['median_ms']:.2f} ms per image"


def format_bytes(count: float) -> str:
    """1536 -> "1.5 KB" (powers of 1024: what a buffer takes)."""
    if count < 1024:
        return f"{count:.0f} B"
    for unit in ("KB", "MB", "GB"):
        count /= 1024
        if count < 1024 or unit == "GB":
            break
    return f"{count:.1f} {unit}"


def compare_rows(before: dict, after: dict) -> list[dict]:
    """Rows present in both runs, matched by (artifact name, backend and its concurrency, batch): medians and their ratio."""
    def key(r):
        return (Path(r["artifact"]).name, _backend_label(r), r["batch"])

    earlier = {key(r): r for r in before["results"]}
    rows = []
    for r in after["results"]:
        if key(r) in earlier:
            old = earlier[key(r)]
            rows.append({"artifact": key(r)[0], "backend": key(r)[1], "batch": r["batch"],
                         "before_ms": old["median_ms"], "after_ms": r["median_ms"],
                         "speedup": old["median_ms"] / r["median_ms"] if r["median_ms"] else float("inf")})
    return rows


def print_compare(before_path, after_path, rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=f"{before_path} → {after_path} (median latency)")
    for column in ("artifact", "backend", "batch", "before ms", "after ms", "speed-up"):
        table.add_column(column, justify="left" if column in ("artifact", "backend") else "right")
    for r in rows:
        table.add_row(r["artifact"], r["backend"], str(r["batch"]), f"{r['before_ms']:.2f}", f"{r['after_ms']:.2f}", f"{r['speedup']:.2f}x")
    wide_console().print(table)


def _pyplot():
    require("matplotlib", extra="plot", why="needed for --plots").use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(report: dict, folder: str | os.PathLike) -> list[Path]:
    """``latency.png`` (distribution per artifact/backend) and, when accuracies are known,
    ``accuracy_vs_latency.png`` (one point per artifact and backend)."""
    plt = _pyplot()
    folder = Path(folder)
    written = []
    results = [r for r in report["results"] if r["batch"] == report["settings"]["batches"][0]]
    labels = [_row_label(r) for r in results]

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(results)), 4))
    ax.boxplot([r["samples_ms"] for r in results], showfliers=True)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20, ha="right")
    ax.set_ylabel("latency per batch (ms)")
    ax.set_title(f"latency distribution · batch {results[0]['batch']} · {report['settings']['height']}x{report['settings']['width']}")
    fig.tight_layout()
    written.append(_save(fig, folder / "latency.png", plt))

    accuracy = report.get("accuracy") or {}
    points = [(r, accuracy.get(r["artifact"])) for r in results if accuracy.get(r["artifact"]) is not None]
    if points:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r, agreement in points:
            ax.scatter(r["median_ms"], 100 * agreement)
            ax.annotate(f"{r['precision']} · {r['backend']}", (r["median_ms"], 100 * agreement), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel("median latency (ms)")
        ax.set_ylabel("argmax agreement with FP32 (%)")
        ax.set_title("accuracy vs latency")
        fig.tight_layout()
        written.append(_save(fig, folder / "accuracy_vs_latency.png", plt))
    return written


def _save(fig, path: Path, plt) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
