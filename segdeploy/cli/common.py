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
