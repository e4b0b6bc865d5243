from __future__ import annotations

import click

from ..manifest import resolve_artifact
from ..onnx_io import summarize_onnx
from .common import echo_json, json_option


@click.command("inspect")
@click.argument("artifact", type=click.Path())
@json_option
def inspect_cmd(artifact, as_json):
    """Summarise an ONNX file or export folder: inputs, outputs, opset, operators, size.

    \b
    Examples:
      segdeploy inspect artifacts/deeplabv3plus
      segdeploy inspect model.onnx --json
    """
    onnx_path, manifest = resolve_artifact(artifact)
    summary = summarize_onnx(onnx_path)
    if manifest:
        summary["manifest"] = {k: manifest.get(k) for k in ("model", "classes", "input", "onnx", "parity")}
    if as_json:
        echo_json(summary)
        return
    click.echo(f"{summary['file']}  ({summary['bytes'] / 1e6:.1f} MB, {summary['parameters'] / 1e6:.2f} M parameters, "
               f"{summary['nodes']} nodes)")
    click.echo("opsets:   " + ", ".join(f"{d} {v}" for d, v in summary["opsets"].items()))
    for kind in ("inputs", "outputs"):
        for t in summary[kind]:
            click.echo(f"{kind[:-1] + ':':<10}{t['name']}  {t['dtype']}  [{', '.join(map(str, t['shape']))}]")
    click.echo("weights:  " + ", ".join(f"{k} ×{v}" for k, v in summary["initializer_dtypes"].items()))
    click.echo("ops:      " + ", ".join(f"{op} {n}" for op, n in summary["ops"].items()))
    if manifest:
        m = manifest
        click.echo(f"model:    {m['model']['name']} {m['model'].get('args', {})}, {len(m['classes'])} classes, "
                   f"precision {m['onnx'].get('precision')}")
        parity = m.get("parity") or {}
        if parity:
            click.echo(f"parity:   {'passed' if parity.get('passed') else 'FAILED'} at "
                       + ", ".join("x".join(map(str, s["shape"])) for s in parity.get("shapes", [])))
