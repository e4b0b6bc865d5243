"""The ``segdeploy`` command line.

Subcommands are imported only when invoked, so that device-side commands (bench, inspect,
infer) never import torch.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import SegdeployError

# name -> "module:attribute" of its click command, relative to this package.
COMMANDS = {
    "models": ".models:models",
    "adopt": ".adopt:adopt",
    "export": ".export:export",
    "bench": ".bench:bench",
    "inspect": ".inspect:inspect_cmd",
    "infer": ".infer:infer",
    "eval": ".eval:eval_cmd",
    "build": ".build:build",
    "verify": ".verify:verify",
    "lint": ".lint:lint_cmd",
    "quantize": ".quantize:quantize",
    "fp16": ".fp16:fp16",
    "crf": ".crf:crf",
    "head": ".head:head",
    "plugins": ".plugins:plugins",
    "serve": ".serve:serve",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name, __name__), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="segdeploy")
def cli():
    """Take semantic-segmentation models to fast, verified inference.

    \b
    A typical session:
      segdeploy models                               # what can be exported
      segdeploy export --model deeplabv3plus -o out  # ONNX + manifest, parity-checked
      segdeploy inspect out/model.onnx               # what is in the graph
      segdeploy bench out --backends torch,ort       # latency side by side

    \b
    Your own ONNX file: record what the graph cannot say, once:
      segdeploy adopt model.onnx --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
    """


def main(argv=None):
    """Entry point: expected errors become one line on stderr and exit code 2 (bad input) or 1."""
    try:
        # standalone_mode=False returns the code of --help/--version exits instead of raising.
        code = cli.main(args=argv, prog_name="segdeploy", standalone_mode=False)
    except SegdeployError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
