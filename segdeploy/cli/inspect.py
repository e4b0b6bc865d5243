from __future__ import annotations

import click

from ..errors import BadInputError
from ..manifest import MANIFEST_NAME, resolve_artifact
from ..onnx_io import load_onnx, summarize_onnx
from .common import echo_json, json_option


@click.command("inspect")
@click.argument("artifact", type=click.Path())
@json_option
def inspect_cmd(artifact, as_json):
    """Summarise an ONNX file or export folder: inputs, outputs, opset, operators, size, and
    what segdeploy will assume when it runs it.

    For a bare ONNX file (no manifest.json beside it) the assumptions are read from the graph:
    the input's name, channels, colour order and size (fixed or dynamic), which output is the
    prediction and how it is read, FP16 weights behind Casts, the conversions later steps make,
    and whether the input normalisation is known (it is not: give --mean/--std, or record them
    once with `segdeploy adopt`).

    \b
    Examples:
      segdeploy inspect artifacts/deeplabv3plus
      segdeploy inspect model.onnx --json
    """
    onnx_path, manifest = resolve_artifact(artifact)
    summary = summarize_onnx(onnx_path)
    if manifest:
        summary["manifest"] = {k: manifest.get(k) for k in ("model", "classes", "input", "output", "onnx", "parity")}
    summary["assumptions"] = assumptions(onnx_path, manifest)
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
    _print_assumptions(summary["assumptions"])


def assumptions(onnx_path, manifest: dict | None) -> dict:
    """What segdeploy's commands will take this model to be: from its manifest, else read from the graph.

    A graph segdeploy cannot feed (no 4-D float32 NCHW input, channels-last, no shapes it can
    read or run) gives ``usable: false`` and the reason.
    """
    from ..adopt import describe_onnx, read_graph
    from ..outputs import Head

    model = load_onnx(onnx_path, load_external_data=False)
    external = any(t.data_location == 1 for t in model.graph.initializer)  # TensorProto.EXTERNAL
    try:
        facts = read_graph(onnx_path, model)
        described = manifest or describe_onnx(onnx_path, need_normalisation=False, model=model)
    except BadInputError as exc:
        return {"usable": False, "problem": str(exc), "external_data": external}
    spec, output = described["input"], described["output"]
    head = Head.from_manifest(described)
    dims = facts.input_dims
    known = bool(spec.get("normalisation_known", True))
    opset = facts.opset
    from ..precision.pipeline import QDQ_MIN_OPSET

    conversions = []
    if opset is not None and opset < QDQ_MIN_OPSET:
        conversions.append(f"quantize converts opset {opset} to {QDQ_MIN_OPSET} with ONNX's version converter (outputs "
                           "checked in ONNX Runtime); fp16, ONNX Runtime and the TensorRT parsers take it as is")
    if facts.fp16_weight_casts:
        conversions.append(f"{facts.fp16_weight_casts} FP16 weights behind Casts: the graph computes in FP32; fp16/quantize "
                           "fold them into FP32 weights first; TensorRT takes them as is")
    return {
        "usable": True,
        "from": MANIFEST_NAME if manifest else "graph",
        "input": {
            "name": facts.input_name,
            "channels": facts.channels,
            "color": spec.get("color"),
            "batch": dims[0] if isinstance(dims[0], int) else None,
            "size": list(facts.fixed_size) if facts.fixed_size else None,
            "dynamic": [axis for axis, d in zip(("batch", "channels", "height", "width"), dims) if not isinstance(d, int)],
            "normalisation_known": known,
            "mean": spec.get("mean") if known else None,
            "std": spec.get("std") if known else None,
        },
        # A labels head's output (N, H, W) has no channel axis: the classes are the manifest's.
        "prediction": {"output": output["name"], **head.to_manifest(), "reading": head.describe(),
                       "dtype": output.get("dtype", "float32"), "layout": output.get("layout", "NCHW"),
                       "channels": facts.output_channels.get(output["name"]) if head.has_scores else None},
        "side_outputs": [o for o in facts.outputs if o != output["name"]],
        "classes": len(described.get("classes") or []),
        "opset": opset,
        "fp16_weight_casts": facts.fp16_weight_casts,
        "external_data": external,
        "conversions": conversions,
    }


def _print_assumptions(a: dict) -> None:
    if not a["usable"]:
        click.echo(f"segdeploy: cannot run this graph as is: {a['problem']}")
        return
    where = "from manifest.json" if a["from"] == MANIFEST_NAME else "read from the graph: no manifest.json"
    i = a["input"]
    size = f"fixed {i['size'][0]}x{i['size'][1]}" if i["size"] else "dynamic (give --size where a size is needed)"
    batch = f"fixed batch {i['batch']}" if i["batch"] else "dynamic batch"
    click.echo(f"segdeploy assumes ({where}):")
    click.echo(f"  input:      {i['name']!r}, {i['channels'] or '?'} channel(s), {i['color']}, {size}, {batch}")
    if i["color"] == "tensor":
        click.echo("  normalise:  none: a tensor input takes samples (.npy) already normalised, fed as given")
    elif i["normalisation_known"]:
        click.echo(f"  normalise:  mean {i['mean']}, std {i['std']}")
    else:
        click.echo("  normalise:  unknown: give --mean and --std, or record them once with `segdeploy adopt` "
                   "(timing, lint and build do not need them)")
    p = a["prediction"]
    click.echo(f"  prediction: output {p['output']!r}: {p['reading']} (head {p['head']}, {p['dtype']} {p['layout']})")
    if p["head"] == "labels":
        click.echo("  host:       takes the label map as it is (no argmax); no probabilities"
                   + (", so infer writes no matte" if p["kind"] == "binary" else ""))
    if a["side_outputs"]:
        click.echo(f"  side outputs: {', '.join(a['side_outputs'])} (not read; --drop-side-outputs on adopt leaves them out)")
    click.echo(f"  opset:      {a['opset']}")
    for note in a["conversions"]:
        click.echo(f"  converts:   {note}")
    if a["external_data"]:
        click.echo("  weights:    in external data files beside the model (kept inside its folder)")
