"""The README's ``demo-output`` block: runs what ``make demo`` runs and writes its output there.

    python benchmarks/demo.py            # after make install; about two minutes on 2 cores

The two commands are the Makefile's ``demo`` recipe (``make -n demo`` prints them), so the block
shows exactly what a user of ``make demo`` sees on this machine.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from readme_blocks import provenance, replace_block

REPO = Path(__file__).resolve().parent.parent


def demo_commands() -> list[str]:
    """The segdeploy commands of the Makefile's demo recipe, as make would run them."""
    dry_run = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [line for line in dry_run.splitlines() if "/segdeploy " in line]


def main() -> int:
    output = []
    for command in demo_commands():
        print(command, file=sys.stderr, flush=True)
        proc = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "140"})
        print(proc.stdout + proc.stderr, file=sys.stderr)
        if proc.returncode != 0:
            return proc.returncode
        output.append(proc.stdout.rstrip())
    body = "\n".join([
        "`make demo`: DeepLabV3+ ResNet-50, 21 classes, seeded random weights, exported, checked at two shapes and",
        "benchmarked on the CPU (side by side in one run, warm-up until stable):",
        "",
        "```",
        *output,
        "```",
        "",
        "![latency distribution of the demo run](docs/demo_latency.png)",
        "",
        provenance("python benchmarks/demo.py"),
    ])
    shutil.copy(REPO / "artifacts" / "plots" / "latency.png", REPO / "docs" / "demo_latency.png")
    print(f"written to {replace_block('demo-output', body)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
