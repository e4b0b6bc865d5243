"""The Python side of the CUDA dense CRF, on machines without a GPU: segdeploy.crf and
benchmarks/crf.py run against the kernels library built with its CUDA driver executed on the host
(kernels/tests/cuda_emulation.h; SEGDEPLOY_KERNELS_LIB points at it in a subprocess). Emulation is
slow, so the images are small; what a GPU adds (speed, races) is left to the GPU tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# sha256 of the emulated CUDA outputs' bytes (float32 probabilities, then int32 labels) for the
# fixed inputs of test_dense_crf_on_cuda_arrays_matches_the_cpu. Emulation is deterministic (see
# kernels/README.md), so a change that keeps the kernels' numerics ("bit-identical under
# emulation") keeps these exactly; a deliberate numeric change updates them here (and
# kGoldenDigests in kernels/tests/test_densecrf.cpp) and says so in its commit message.
GOLDEN_DIGESTS = {
    "photo": "00347353a4a04b69899252bef40ab190dd173ae9b086d2f946cd2341a6a72977",  # 40x48, 21 classes
    "batch": "4022023b51acf9361b7a5c53425c8889cd9be15d0b883e1ad958ff45aed89d70",  # 2 images, float16, CHW
    "odd": "630b1c43c578d18cd0729299dd32f2ad4d1b628877ac0cb39685fab9b6bd6bd4",  # 31x33, 5 classes
}


@pytest.fixture(scope="module")
def emulated_library(emulated_cuda_library) -> Path:
    return emulated_cuda_library  # built once per session (conftest.py)


def run_python(library: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEGDEPLOY_KERNELS_LIB": str(library), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def test_dense_crf_on_cuda_arrays_matches_the_cpu(emulated_library):
    script = textwrap.dedent("""
        import hashlib
        import numpy as np
        from segdeploy import _native
        from segdeploy.crf import CudaBuffer, dense_crf, synthetic_logits
        from segdeploy.errors import BadInputError
        from skimage.data import astronaut

        assert _native.cuda_device_count() == 1 and _native.built_with_cuda()
        image = np.ascontiguousarray(astronaut()[96:136, 200:248])
        logits = synthetic_logits(image, 21, seed=9)
        cpu_probabilities, cpu_labels = dense_crf(logits, image)
        gpu_probabilities, gpu_labels = dense_crf(CudaBuffer.from_numpy(logits), CudaBuffer.from_numpy(image))
        gpu_probabilities, gpu_labels = gpu_probabilities.numpy(), gpu_labels.numpy()
        print("labels", (gpu_labels == cpu_labels).mean(), "mean_dq", np.abs(gpu_probabilities - cpu_probabilities).mean(),
              "max_dq", np.abs(gpu_probabilities - cpu_probabilities).max())
        assert gpu_labels.dtype == np.int32 and gpu_probabilities.shape == logits.shape
        assert gpu_probabilities.dtype == np.float32
        def digest(*arrays):
            return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()
        print("digest_photo", digest(gpu_probabilities, gpu_labels))

        images = np.stack([image, image[::-1]]).transpose(0, 3, 1, 2).copy()  # (N, 3, H, W)
        unary = np.stack([logits, logits[:, ::-1]]).astype(np.float16)
        cpu = dense_crf(unary, images, output="probabilities", normalization="after", iterations=3)
        gpu = dense_crf(CudaBuffer.from_numpy(unary), CudaBuffer.from_numpy(images), output="probabilities",
                        normalization="after", iterations=3).numpy()
        print("batch_mean_dq", np.abs(gpu - cpu).mean(), "batch_max_dq", np.abs(gpu - cpu).max(),
              "batch_labels", (gpu.argmax(1) == cpu.argmax(1)).mean(), "digest_batch", digest(gpu))

        odd_image = np.ascontiguousarray(astronaut()[40:71, 300:333])  # odd pixel and class counts
        odd_logits = synthetic_logits(odd_image, 5, seed=10)
        cpu_probabilities, cpu_labels = dense_crf(odd_logits, odd_image)
        gpu_probabilities, gpu_labels = dense_crf(CudaBuffer.from_numpy(odd_logits), CudaBuffer.from_numpy(odd_image))
        gpu_probabilities, gpu_labels = gpu_probabilities.numpy(), gpu_labels.numpy()
        print("odd_labels", (gpu_labels == cpu_labels).mean(), "odd_mean_dq", np.abs(gpu_probabilities - cpu_probabilities).mean(),
              "odd_max_dq", np.abs(gpu_probabilities - cpu_probabilities).max(), "digest_odd", digest(gpu_probabilities, gpu_labels))

        logits[2, 5, 7] = np.nan
        try:
            dense_crf(CudaBuffer.from_numpy(logits), CudaBuffer.from_numpy(image))
        except BadInputError as error:
            print("nan_error", str(error).replace(" ", "_"))
    """)
    result = run_python(emulated_library, "-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = dict(zip(*[iter(result.stdout.split())] * 2))
    for case, golden in GOLDEN_DIGESTS.items():
        assert figures[f"digest_{case}"] == golden, (
            f"the emulated CUDA result of case {case!r} changed (sha256 {figures[f'digest_{case}']}, golden {golden}): "
            "a refactor must keep the kernels' results bit-identical; a deliberate numeric change updates "
            "GOLDEN_DIGESTS here and kGoldenDigests in kernels/tests/test_densecrf.cpp, and says so in its commit")
    # CUDA vs CPU (the CPU's x86-64-v3 build) as measured: labels all equal; mean |dQ| 2.8e-6, 2.8e-6,
    # 9.6e-6 and max |dQ| 1.65e-3, 6.5e-4, 6.6e-4 (photo, batch, odd). The limits are 2-3x those.
    for prefix, mean_limit, max_limit in (("", 8e-6, 4e-3), ("batch_", 8e-6, 1.5e-3), ("odd_", 2.5e-5, 1.5e-3)):
        assert float(figures[f"{prefix}labels"]) == 1.0, figures
        assert float(figures[f"{prefix}mean_dq"]) <= mean_limit, figures
        assert float(figures[f"{prefix}max_dq"]) <= max_limit, figures
    assert "unary[0,_2,_5,_7]" in figures["nan_error"]


def test_workspace_is_sized_by_shape_for_any_image(emulated_library):
    """workspace_bytes is one figure per shape, which every image of that shape runs in: a noise
    image (nearly every lattice entry its own vertex, the worst case the bound is sized for) agrees
    with the CPU as the photo does."""
    script = textwrap.dedent("""
        import numpy as np
        from segdeploy.crf import CRFParams, CudaBuffer, dense_crf, workspace_bytes
        from segdeploy.crf._binding import cuda_workspace_bytes
        from segdeploy.errors import BadInputError

        assert workspace_bytes((40, 48), 21) == cuda_workspace_bytes(21, 40, 48)
        for shape, classes in (((40,), 21), ((40, 48, 3), 21), ((40.0, 48), 21), ((40, 48), True), ((0, 48), 21)):
            try:
                workspace_bytes(shape, classes)
                raise SystemExit(f"no error for {shape} {classes}")
            except BadInputError:
                pass
        rng = np.random.default_rng(5)
        noise = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        logits = rng.normal(size=(21, 40, 48)).astype(np.float32)
        # DeepLab's parameters, then kernels so narrow that every entry of both lattices is a vertex of its own.
        for case, params in (("noise", CRFParams()),
                             ("apart", CRFParams(spatial_theta=0.1, bilateral_theta_xy=0.1, bilateral_theta_rgb=0.1))):
            cpu_probabilities, cpu_labels = dense_crf(logits, noise, params)
            gpu_probabilities, gpu_labels = dense_crf(CudaBuffer.from_numpy(logits), CudaBuffer.from_numpy(noise), params)
            gpu_probabilities, gpu_labels = gpu_probabilities.numpy(), gpu_labels.numpy()
            print(f"{case}_labels", (gpu_labels == cpu_labels).mean(),
                  f"{case}_mean_dq", np.abs(gpu_probabilities - cpu_probabilities).mean(),
                  f"{case}_max_dq", np.abs(gpu_probabilities - cpu_probabilities).max())
        print("mib_512", workspace_bytes((512, 512), 21) / 2**20, "mib_1024x2048", workspace_bytes((1024, 2048), 19) / 2**20)
    """)
    result = run_python(emulated_library, "-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = {key: float(value) for key, value in zip(*[iter(result.stdout.split())] * 2)}
    # Measured: labels all equal; mean |dQ| 1.2e-5 and 2.6e-5, max |dQ| 8.8e-3 and 0.41 (noise, apart;
    # the lattice rows are float16 on CUDA). The limits are about 2x. In the apart case a pixel's
    # message is mostly its own Q, which the iterations amplify: 3 pixels of 1920 differ by over
    # 0.01 (same labels), byte for byte as before the workspace's memory was shared, so its max
    # is left unchecked.
    for case, mean_limit, max_limit in (("noise", 2.5e-5, 2e-2), ("apart", 6e-5, 1.0)):
        assert figures[f"{case}_labels"] == 1.0, figures
        assert figures[f"{case}_mean_dq"] <= mean_limit and figures[f"{case}_max_dq"] <= max_limit, figures
    # 392.8 MiB and 2989 MiB (707 MiB and 5309 MiB before the build's scratch was carved by phase and
    # the filter's value rows took its memory; kernels/README.md, "Workspace").
    assert figures["mib_512"] <= 400 and figures["mib_1024x2048"] <= 3000, figures


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


def test_workspace_cache_stays_under_its_limit_and_frees(emulated_library):
    """The GPU workspaces dense_crf keeps between calls: real (emulated) device allocations."""
    script = textwrap.dedent("""
        import os
        import numpy as np
        from segdeploy import crf
        from segdeploy.crf import cuda as crf_cuda
        from segdeploy.crf._binding import cuda_workspace_bytes

        def resident() -> int:  # the emulator's device memory is this process's (written at allocation)
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        os.environ[crf.WORKSPACE_LIMIT_ENV] = "1.5"  # read at use, not at import
        assert crf.workspace_limit() == 3 << 19
        del os.environ[crf.WORKSPACE_LIMIT_ENV]
        assert crf.workspace_limit() == 1 << 30  # the default, for an 8 GB Jetson

        # Three shapes, in the order a, b, a, c: with room for two, c evicts b (the least recently used).
        rng = np.random.default_rng(0)
        shapes = {"a": (3, 24, 32), "b": (5, 32, 24), "c": (4, 28, 28)}
        size = {name: cuda_workspace_bytes(*shape) for name, shape in shapes.items()}
        assert len({size["a"] + size["b"], size["a"] + size["c"], size["b"] + size["c"]}) == 3
        crf.set_workspace_limit(sum(size.values()) - 1)
        held = []
        for name in "abac":
            classes, height, width = shapes[name]
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            logits = rng.normal(size=(classes, height, width)).astype(np.float32)
            labels = crf.dense_crf(crf.CudaBuffer.from_numpy(logits), crf.CudaBuffer.from_numpy(image), output="labels",
                                   iterations=1).numpy()
            assert labels.shape == (height, width) and labels.min() >= 0
            held.append(crf.cached_workspace_bytes())
            assert held[-1] <= crf.workspace_limit()
        assert held == [size["a"], size["a"] + size["b"], size["a"] + size["b"], size["a"] + size["c"]], (held, size)
        kept = crf_cuda.workspace(0, 0, *shapes["a"])
        assert crf.cached_workspace_bytes() == size["a"] + size["c"]  # a was cached, not allocated again
        crf.set_workspace_limit(size["a"])  # lowering the limit evicts now: c, the least recent
        assert crf.cached_workspace_bytes() == size["a"] and crf_cuda.workspace(0, 0, *shapes["a"]) is kept
        del kept

        # A workspace larger than the limit is kept alone (video at that size does not allocate at every
        # frame) and goes at the next shape; a limit of 0 keeps none; free_workspaces frees them all.
        big = (21, 512, 512)
        crf.set_workspace_limit(None)
        before = resident()
        workspace = crf_cuda.workspace(0, 0, *big)
        assert crf.cached_workspace_bytes() == size["a"] + workspace.nbytes
        grown = resident() - before
        assert grown >= 0.9 * workspace.nbytes, (grown, workspace.nbytes)
        del workspace
        crf.free_workspaces()
        assert crf.cached_workspace_bytes() == 0 and resident() - before < 0.1 * grown
        crf.set_workspace_limit(cuda_workspace_bytes(*big) - 1)
        workspace = crf_cuda.workspace(0, 0, *shapes["a"])
        assert crf_cuda.workspace(0, 0, *big) is crf_cuda.workspace(0, 0, *big)  # kept: not allocated again
        assert crf.cached_workspace_bytes() == cuda_workspace_bytes(*big)  # alone: a was freed to make room
        assert crf_cuda.workspace(0, 0, *shapes["a"]) is not workspace
        assert crf.cached_workspace_bytes() == size["a"]  # the next shape evicts the oversized one
        del workspace
        assert resident() - before < 0.1 * grown
        crf.set_workspace_limit(0)
        assert crf.cached_workspace_bytes() == 0
        crf_cuda.workspace(0, 0, *shapes["a"])
        assert crf.cached_workspace_bytes() == 0
        print("ok", size, held)
    """)
    result = run_python(emulated_library, "-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok"), result.stdout
