"""The Python side of the CUDA dense CRF, on machines without a GPU: segdeploy.crf and
benchmarks/crf.py run against the kernels library built with its CUDA driver executed on the host
(kernels/tests/cuda_emulation.h; SEGDEPLOY_KERNELS_LIB points at it in a subprocess). Emulation is
slow, so the images are small; what a GPU adds (speed, races) is left to the GPU tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def emulated_library(tmp_path_factory) -> Path:
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake or a C++ compiler is not installed")
    if shutil.which("nvcc") is None:
        pytest.skip("the CUDA toolkit (its headers) is not installed")
    build = tmp_path_factory.mktemp("emulated_cuda")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    for command in (
        ["cmake", "-S", str(ROOT), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
         "-DSEGDEPLOY_WITH_CUDA=OFF", "-DSEGDEPLOY_BUILD_TESTS=ON"],
        ["cmake", "--build", str(build), "-j", "2", "--target", "segdeploy_kernels_emulated_cuda"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return build / "kernels" / "libsegdeploy_kernels_emulated_cuda.so"


def run_python(library: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEGDEPLOY_KERNELS_LIB": str(library), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def test_dense_crf_on_cuda_arrays_matches_the_cpu(emulated_library):
    script = textwrap.dedent("""
        import numpy as np
        from segdeploy import kernels
        from segdeploy.crf import CudaBuffer, dense_crf, synthetic_logits
        from segdeploy.errors import BadInputError
        from skimage.data import astronaut

        assert kernels.cuda_device_count() == 1 and kernels.built_with_cuda()
        image = np.ascontiguousarray(astronaut()[96:136, 200:248])
        logits = synthetic_logits(image, 21, seed=9)
        cpu_probabilities, cpu_labels = dense_crf(logits, image)
        gpu_probabilities, gpu_labels = dense_crf(CudaBuffer.from_numpy(logits), CudaBuffer.from_numpy(image))
        gpu_probabilities, gpu_labels = gpu_probabilities.numpy(), gpu_labels.numpy()
        print("labels", (gpu_labels == cpu_labels).mean(), "mean_dq", np.abs(gpu_probabilities - cpu_probabilities).mean())
        assert gpu_labels.dtype == np.int32 and gpu_probabilities.shape == logits.shape

        images = np.stack([image, image[::-1]]).transpose(0, 3, 1, 2).copy()  # (N, 3, H, W)
        unary = np.stack([logits, logits[:, ::-1]]).astype(np.float16)
        cpu = dense_crf(unary, images, output="probabilities", normalization="after", iterations=3)
        gpu = dense_crf(CudaBuffer.from_numpy(unary), CudaBuffer.from_numpy(images), output="probabilities",
                        normalization="after", iterations=3).numpy()
        print("batch_mean_dq", np.abs(gpu - cpu).mean(), "batch_labels", (gpu.argmax(1) == cpu.argmax(1)).mean())

        logits[2, 5, 7] = np.nan
        try:
            dense_crf(CudaBuffer.from_numpy(logits), CudaBuffer.from_numpy(image))
        except BadInputError as error:
            print("nan_error", str(error).replace(" ", "_"))
    """)
    result = run_python(emulated_library, "-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = dict(zip(*[iter(result.stdout.split())] * 2))
    assert float(figures["labels"]) >= 0.999 and float(figures["mean_dq"]) <= 1e-3
    assert float(figures["batch_labels"]) >= 0.999 and float(figures["batch_mean_dq"]) <= 1e-3
    assert "unary[0,_2,_5,_7]" in figures["nan_error"]


def test_crf_benchmark_times_and_profiles_the_cuda_kernels(emulated_library, tmp_path):
    """The GPU check's benchmark step (benchmarks/gpu_check.sh), rehearsed on a tiny photo."""
    skimage_data = pytest.importorskip("skimage.data")
    np.save(tmp_path / "photo.npy", np.ascontiguousarray(skimage_data.astronaut()[96:128, 200:232]))
    report = tmp_path / "crf.json"
    result = run_python(emulated_library, "benchmarks/crf.py", "--skip-cpu", "--gpu-repeats", "1", "--gpu-profile",
                        "--image", str(tmp_path / "photo.npy"), "--json", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replayed from a CUDA graph" in result.stdout
    for phase in ("bilateral build: hash, number", "bilateral blur", "slice, softmax", "total (CUDA)"):
        assert phase in result.stderr, result.stderr[-3000:]
    cuda = json.loads(report.read_text())["cuda"]
    assert cuda["full_median_ms"] > cuda["one_iteration_median_ms"] > 0
    assert cuda["label_agreement"] >= 0.999 and cuda["mean_abs_dq"] <= 1e-3


def test_gpu_ab_compares_builds(emulated_library, tmp_path):
    """benchmarks/build_kernels_at.sh then benchmarks/crf_gpu_ab.py, as a GPU session would use them
    on builds of two commits (here the fixture's build and one of HEAD, both emulated)."""
    skimage_data = pytest.importorskip("skimage.data")
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    np.save(tmp_path / "photo.npy", np.ascontiguousarray(skimage_data.astronaut()[96:120, 200:224]))
    def worktrees() -> str:
        return subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout

    before = worktrees()
    env = {**os.environ, "TARGET": "segdeploy_kernels_emulated_cuda",
           "CMAKE_ARGS": "-DSEGDEPLOY_WITH_CUDA=OFF -DSEGDEPLOY_BUILD_TESTS=ON"}
    built = subprocess.run(["bash", "benchmarks/build_kernels_at.sh", str(tmp_path / "builds"), "HEAD"],
                           capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert built.returncode == 0, built.stderr[-3000:]
    (second,) = (tmp_path / "builds").glob("*/libsegdeploy_kernels.so")
    assert worktrees() == before  # the script's worktree is gone
    result = run_python(emulated_library, "benchmarks/crf_gpu_ab.py", str(emulated_library), str(second),
                        "--rounds", "1", "--repeats", "1", "--image", str(tmp_path / "photo.npy"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path)) or line.startswith("/")]
    assert len(rows) == 2 and rows[0].endswith("1.00x"), result.stdout
    assert float(rows[1].split()[4]) >= 0.999  # labels against the CPU

    missing = run_python(emulated_library, "benchmarks/crf_gpu_ab.py", str(tmp_path / "nowhere.so"))
    assert missing.returncode == 2 and "no such library" in missing.stderr
