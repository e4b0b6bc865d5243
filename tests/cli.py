"""Running the real ``segdeploy`` CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

# Imported before segdeploy, this makes `import torch` fail as on a Jetson without torch.
_BLOCK_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "


def run_cli(*args, cwd=None, block_torch: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """``segdeploy ARGS`` with the checkout and the test models importable; never raises on failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    env.pop("COLUMNS", None)
    prelude = _BLOCK_TORCH if block_torch else ""
    command = [sys.executable, "-c", prelude + "from segdeploy.cli import main; main()", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """The process failed with ``code`` and one ``error:`` line naming each fragment, no traceback."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == code, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def export_colour_net(out: Path, size: int = 64) -> Path:
    """Export the constructed ColourNet (3 classes) to ``out`` through the CLI; returns ``out``."""
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--input-size", size, size, "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out
