"""Pieces shared by the CLI commands: JSON output, progress on stderr, option parsing."""

from __future__ import annotations

import contextlib
import json

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON result on stdout.")


def echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@contextlib.contextmanager
def progress_status(enabled: bool = True):
    """Yield ``update(message)``: a spinner with the current step on stderr (silent when not a TTY)."""
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda message: None
        return
    with console.status("starting") as status:
        yield lambda message: status.update(f"{message}…")


def parse_key_values(pairs: tuple[str, ...], option: str) -> dict:
    """``("backbone=resnet101", "output_stride=8")`` -> ``{"backbone": "resnet101", "output_stride": 8}``."""
    result = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=option)
        try:
            result[key] = json.loads(raw)
        except json.JSONDecodeError:
            result[key] = raw  # a bare word such as resnet101
    return result


def _numbers(ctx, param, value):
    """``"0.485,0.456,0.406"`` -> a tuple of floats, one per input channel."""
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if not numbers:
        raise click.BadParameter(f"expected comma-separated numbers (one per input channel), got {value!r}")
    return numbers


def _class_names(ctx, param, value):
    """A text file of class names, one per line, in channel order."""
    if value is None:
        return None
    from ..errors import BadInputError

    try:
        names = [line.strip() for line in open(value, encoding="utf-8") if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{value}: not a readable text file of class names ({exc})") from None
    if not names:
        raise BadInputError(f"{value}: no class names in it (one per line)")
    return tuple(names)


#: What a user's ONNX file cannot say about itself (see segdeploy/adopt.py), as options.
MODEL_OPTIONS = [
    click.option("--mean", callback=_numbers, metavar="M1,M2,...",
                 help="Per-channel mean on scaled pixels, e.g. 0.485,0.456,0.406 (no manifest: required for image inputs)."),
    click.option("--std", callback=_numbers, metavar="S1,S2,...",
                 help="Per-channel std on scaled pixels, e.g. 0.229,0.224,0.225 (no manifest: required for image inputs)."),
    click.option("--scale", type=float, help="Pixel scale before mean/std.  [default: 1/255]"),
    click.option("--size", nargs=2, type=click.IntRange(1), metavar="H W",
                 help="Input size images are resized to. Default: the manifest's, else the graph's fixed size."),
    click.option("--color", type=click.Choice(["RGB", "BGR", "GRAY", "tensor"], case_sensitive=False),
                 help="What the input channels hold; 'tensor' inputs (depth, multispectral) take .npy samples. "
                      "Default: RGB for 3 channels, GRAY for 1, tensor otherwise."),
    click.option("--output-name", "output_name", metavar="NAME",
                 help="The graph output that is the prediction (several outputs). Default: the manifest's, else the first."),
    click.option("--kind", type=click.Choice(["multiclass", "binary"]),
                 help="How to read the prediction: argmax over channels, or one channel thresholded. Default: by channel count."),
    click.option("--threshold", type=float,
                 help="Binary outputs: foreground above this.  [default: 0.5 after a Sigmoid, else 0]"),
    click.option("--classes", "classes_file", type=click.Path(dir_okay=False), callback=_class_names,
                 help="Text file of class names, one per line."),
]


def model_options(command, skip: tuple[str, ...] = ()):
    """Add MODEL_OPTIONS (except those whose parameter name is in ``skip``) to a command."""
    for option in reversed(MODEL_OPTIONS):
        probe = option(lambda: None)
        if probe.__click_params__[0].name not in skip:
            command = option(command)
    return command


def model_options_from(params: dict, drop_side_outputs: bool = False):
    """A ``ModelOptions`` from the parsed MODEL_OPTIONS values in ``params``."""
    from ..adopt import ModelOptions

    size = params.get("size")
    return ModelOptions(
        mean=params.get("mean"), std=params.get("std"), scale=params.get("scale"), size=tuple(size) if size else None,
        color=params.get("color"), output=params.get("output_name"), kind=params.get("kind"),
        threshold=params.get("threshold"), classes=params.get("classes_file"), drop_side_outputs=drop_side_outputs,
    )  # fmt: skip
