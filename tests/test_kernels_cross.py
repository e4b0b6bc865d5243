"""The kernels on the Jetson's CPU architecture: kernels/tests/cross_aarch64.sh cross-compiles the
library and every C++ test registered in kernels/CMakeLists.txt for aarch64 (no CUDA) and runs them
under qemu-aarch64 through CTest, so that the portable (non-x86) paths cannot silently break. CI
installs the cross compiler and qemu (.ci/run); elsewhere the test skips without them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CROSS_TOOLS = ("aarch64-linux-gnu-g++", "aarch64-linux-gnu-readelf", "aarch64-linux-gnu-nm", "qemu-aarch64",
               "cmake", "ctest")


def registered_tests() -> set[str]:
    """add_test names in kernels/CMakeLists.txt but those of the emulated CUDA library, which needs
    CUDA's headers for the target (a cross build has none)."""
    text = (ROOT / "kernels" / "CMakeLists.txt").read_text()
    return {name for name in re.findall(r"add_test\s*\(\s*NAME\s+(\w+)", text) if "emulated" not in name}


def ctest_results(output: str) -> tuple[dict[str, str], int]:
    """Each test's status ("Passed", "Failed", "***Timeout", ...) from ctest's progress lines, and
    the total of its summary line."""
    statuses = dict(re.findall(r"^\s*\d+/\d+ Test\s+#\d+: (\S+) \.+\s*(\S+(?: \S+)?)\s+[\d.]+ sec", output, re.M))
    total = re.search(r"tests passed, \d+ tests? failed out of (\d+)", output)
    return statuses, int(total.group(1)) if total else 0


@pytest.mark.slow
def test_kernels_cross_compile_for_aarch64_and_pass_their_tests_under_qemu(tmp_path):
    missing = [tool for tool in CROSS_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install g++-aarch64-linux-gnu qemu-user)")
    result = subprocess.run(["bash", str(ROOT / "kernels/tests/cross_aarch64.sh"), str(tmp_path / "aarch64")],
                            capture_output=True, text=True, timeout=1200, env={**os.environ, "JOBS": "2"})
    log = f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, log
    statuses, total = ctest_results(result.stdout)
    assert total > 0 and len(statuses) == total, log
    assert all(status == "Passed" for status in statuses.values()), statuses
    assert registered_tests() <= statuses.keys(), f"registered but not run on aarch64: {registered_tests() - statuses.keys()}"
    assert "aarch64 cross:" in result.stdout.splitlines()[-1]


@pytest.mark.slow
def test_kernels_compile_as_cpp17_with_jetpacks_oldest_compilers(tmp_path):
    """kernels/tests/check_old_compilers.sh: every kernel source with the oldest g++ and clang++ here
    (-std=c++17 -pedantic-errors -Werror), the CUDA sources through nvcc -ccbin <that g++>, and no
    builtin newer than GCC 9 (JetPack 5) in what an aarch64 build compiles. Stages whose compiler is
    missing are skipped by the script."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    result = subprocess.run(["bash", str(ROOT / "kernels/tests/check_old_compilers.sh"), str(tmp_path / "old-")],
                            capture_output=True, text=True, timeout=1200, env={**os.environ, "JOBS": "2"})
    stages = dict(re.findall(r"^(gxx|clang|nvcc|builtins)\s+(passed|FAILED|skipped)", result.stdout, re.M))
    if set(stages.values()) == {"skipped"}:
        pytest.skip(f"no old compiler installed (.ci/run installs g++-11 and clang-13):\n{result.stdout}")
    assert result.returncode == 0 and "FAILED" not in stages.values(), f"{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert len(stages) == 4, result.stdout
