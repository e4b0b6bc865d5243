"""The C++ tests of the kernels (kernels/tests), built with AddressSanitizer and
UndefinedBehaviorSanitizer into a temporary directory and run by CTest: against the library, and
(where CUDA's headers are installed) against the CUDA driver run on the host by
kernels/tests/cuda_emulation.h, so that the CUDA kernels are checked without a GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpp_tests_pass_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake or a C++ compiler is not installed")
    build = tmp_path / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = [
        "cmake", "-S", str(ROOT), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Debug",
        "-DSEGDEPLOY_WITH_CUDA=OFF", "-DSEGDEPLOY_BUILD_TESTS=ON", "-DSEGDEPLOY_SANITIZE=address,undefined",
    ]
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1"}
    for command in (configure, ["cmake", "--build", str(build), "-j", "2"],
                    ["ctest", "--test-dir", str(build), "--output-on-failure"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    if shutil.which("nvcc"):  # CUDA's headers are there: the CUDA kernels were tested on the host
        assert "densecrf_emulated_cuda ...." in result.stdout and "0 tests failed" in result.stdout, result.stdout
