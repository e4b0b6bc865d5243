"""``segdeploy models``: the registered variants with their size, cost and accepted checkpoints."""

from __future__ import annotations

import click

from ..models import list_models
from .common import echo_json, json_option

OWN_CHECKPOINTS = "segdeploy state dict"


def model_rows(family: str | None = None) -> list[dict]:
    from ..models.flops import model_complexity  # imports torch: not at `segdeploy --help`

    rows = []
    for spec in list_models():
        if family and spec.family.lower() != family.lower():
            continue
        complexity = model_complexity(spec)
        rows.append({
            "name": spec.name,
            "family": spec.family,
            "params_m": round(complexity["params_m"], 3),
            "paper_params_m": spec.paper_params_m,
            "gflops": round(complexity["gflops"], 2),
            "flops_input_size": complexity["input_size"],
            "output_stride": spec.output_stride,
            "checkpoints": list(spec.checkpoints),
            "paper": spec.paper,
        })
    return rows


@click.command()
@click.option("--family", metavar="NAME", help="Only this family (e.g. DeepLabv3+, FCN, U-Net).")
@json_option
def models(family, as_json):
    """List the registered models: parameters, GFLOPs at 512×512, output stride, checkpoints.

    GFLOPs count one multiply-add as one FLOP (as the papers do). Input height and width must
    be multiples of the output stride (unet_original: see its valid sizes; its GFLOPs are at the
    nearest valid size, 524×524).

    \b
    Examples:
      segdeploy models
      segdeploy models --family DeepLabv3+
      segdeploy models --json | jq '.[] | select(.params_m < 10) | .name'
    """
    rows = model_rows(family)
    if as_json:
        echo_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(caption="Every model also loads its own (segdeploy) state dicts.")
    table.add_column("name", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("params (M)", justify="right")
    table.add_column("GFLOPs@512²", justify="right")
    table.add_column("output stride", justify="right")
    table.add_column("other checkpoints")
    for row in rows:
        foreign = [c for c in row["checkpoints"] if c != OWN_CHECKPOINTS]
        table.add_row(
            row["name"], row["family"], f"{row['params_m']:.2f}", f"{row['gflops']:.1f}",
            str(row["output_stride"]), ", ".join(foreign) or "-",
        )
    Console().print(table)
