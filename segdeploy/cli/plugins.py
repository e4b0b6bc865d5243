"""``segdeploy plugins``: depthwise convolutions as segdeploy's nodes and atrous convolutions split, where
measurement says so, in a new artifact."""

from __future__ import annotations

import click

from .common import echo_json, json_option, model_options, model_options_from
from .fp16 import progress_display

MODES = ("auto", "all", "none")


def plugins_option(command, default: str = "auto"):
    """--plugins, shared by ``export`` (default none) and ``plugins`` (default auto)."""
    return click.option(
        "--plugins", type=click.Choice(MODES), default=default, show_default=True,
        help="Depthwise convolutions (+ ReLU/ReLU6/HardSwish, + the following 1x1 conv) as segdeploy's DepthwiseConv / "
             "SeparableConv nodes. auto: each layer timed native vs plugin on ONNX Runtime CPU, replaced only where "
             "the plugin is 10% faster, then the whole model checked; all: every match; none: no depthwise rewrite.",
    )(command)  # fmt: skip


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--output", "-o", type=click.Path(file_okay=False),
              help="Output artifact folder. Default: beside the source, suffixed _plugins.")
@plugins_option
@click.option("--atrous", type=click.Choice(MODES), default="auto", show_default=True,
              help="Dilated convolutions split into regions that compute only the taps that see the image (standard "
                   "ONNX ops, exact; fixes the input size). auto: kept only where measured faster; all; none.")
@click.option("--input-size", nargs=2, type=click.IntRange(1), metavar="H W",
              help="Image size to measure at (and, for the atrous rewrite of a dynamic-size graph, the new artifact's "
                   "fixed size). Default: the graph's fixed size, else the manifest's, else 512 512.")
@click.option("--threads", type=click.IntRange(0), default=0, show_default=True,
              help="ONNX Runtime intra-op threads for the measurements (0: its default, every core).")
@model_options
@json_option
def plugins(artifact, output, plugins, atrous, input_size, threads, as_json, **model_params):
    """Make a copy of ARTIFACT whose depthwise and dilated convolutions run as segdeploy's plugins
    where they are faster.

    ARTIFACT is a segdeploy artifact folder or a user's ONNX file (give --mean/--std when no
    manifest.json describes it). Every depthwise Conv (group == channels, kernel <= 7, constant
    weights) is a candidate, with its activation and, where a 1x1 Conv alone reads it, as the
    fused separable block; grouped or dilated Convs that do not match are listed with the reason.
    With --plugins auto each candidate is timed as a one-layer model at its real input shape,
    native vs plugin alternating in one run, and replaced only where the plugin wins by 10%; the
    manifest's `plugins` section records every time, the machine and the threads. The new graph
    must reproduce the original with ONNX Runtime at two inputs (max |Δ| <= 1e-4 of the logit
    scale, labels >= 99.99%) or nothing is written (exit 1).

    \b
    Examples:
      segdeploy plugins artifacts/deeplabv3plus_mobilenetv2                 # measured: -> ..._plugins
      segdeploy plugins artifacts/deeplabv3plus_mobilenetv2 --plugins all -o out/dw_all
      segdeploy plugins artifacts/deeplabv3_resnet50 --plugins none --atrous all --input-size 512 512
      segdeploy plugins theirs.onnx --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --threads 2
    """
    from ..conv.artifact import apply_plugins

    with progress_display(not as_json) as (progress, counter):
        result = apply_plugins(artifact, output, plugins=plugins, atrous=atrous,
                               input_size=tuple(input_size) if input_size else None, threads=threads,
                               options=model_options_from(model_params), progress=progress, counter=counter)
    if as_json:
        echo_json({"output_dir": str(result.output_dir), "manifest": result.manifest})
        return
    click.echo(f"wrote {result.output_dir / result.manifest['onnx']['file']} and {result.output_dir / 'manifest.json'}")
    echo_plugins(result.manifest)


def echo_plugins(manifest: dict) -> None:
    """The plugins section: what was replaced, the times, the check."""
    section = manifest.get("plugins")
    if not section:
        return
    timing = section.get("timing", {})
    where = timing.get("machine", {})
    click.echo(f"plugins {section['mode']}, atrous {section['atrous']} at {section['input_size'][0]}x"
               f"{section['input_size'][1]}: {len(section['replaced'])} replaced, {len(section['skipped'])} not, "
               f"{len(section['unmatched'])} unmatched ({where.get('runtime', '')}, threads {where.get('threads', '')})")
    times = {t["name"]: t for t in timing.get("layers", [])}
    for entry in section["replaced"]:
        t = times.get(entry["node"])
        figures = f": {t['native_ms']:.3f} -> {t['plugin_ms']:.3f} ms ({t['speedup']:.2f}x)" if t else ""
        click.echo(f"  replaced {entry['node']}{figures}")
    if "model" in timing:
        m = timing["model"]
        dropped = " (slower: rewrite dropped)" if timing.get("rewrite_dropped") else ""
        click.echo(f"  whole model: native {m['native_ms']:.2f} ms, rewritten {m['plugin_ms']:.2f} ms "
                   f"({m['speedup']:.2f}x){dropped}")
    for entry in section["unmatched"]:
        click.echo(f"  unmatched {entry['node']}: {entry['reason']}")
    for check in section["parity"]["shapes"]:
        shape = "x".join(map(str, check["shape"]))
        ties = (f" ({check['disagreeing_pixels']} pixels differ, {check['near_ties']} of them near-ties)"
                if check.get("disagreeing_pixels") else "")
        click.echo(f"  {'ok  ' if check['passed'] else 'FAIL'} shape {shape}: max |Δ| {check['max_abs_diff']:.3g} "
                   f"(limit {check['limit']:.3g}), label agreement {check['argmax_agreement']:.4%}{ties}")
