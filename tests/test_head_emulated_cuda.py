"""The Python side of the CUDA upsample + argmax, on machines without a GPU: segdeploy.head.cuda and
benchmarks/head_gpu.py run against the kernels library built with its CUDA drivers executed on the
host (kernels/tests/cuda_emulation.h; ``emulated_cuda_library`` in conftest.py, pointed at by
SEGDEPLOY_KERNELS_LIB in a subprocess). The CUDA labels are compared with the CPU kernel's
(segdeploy.head.kernel.upsample_argmax); kernels/tests/test_upsample_argmax_cuda.cpp checks any
difference against a float64 interpolation (near-exact ties only)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(library: Path, *args: str, **environment: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEGDEPLOY_KERNELS_LIB": str(library), "PYTHONPATH": str(ROOT), **environment}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def test_upsample_argmax_on_cuda_buffers_matches_the_cpu(emulated_cuda_library):
    script = textwrap.dedent("""
        import numpy as np
        from segdeploy import _native
        from segdeploy.crf import CudaBuffer
        from segdeploy.errors import BadInputError
        from segdeploy.head.cuda import upsample_argmax_cuda
        from segdeploy.head.kernel import upsample_argmax

        assert _native.cuda_device_count() == 1 and _native.built_with_cuda()
        rng = np.random.default_rng(0)
        cases = [  # (scores shape, size, keyword arguments)
            ((2, 21, 13, 17), (52, 68), {}),
            ((1, 19, 9, 14), (72, 112), {"coordinates": "align_corners"}),
            ((1, 7, 11, 10), (23, 31), {"coordinates": "pytorch_half_pixel"}),
            ((1, 7, 11, 10), (23, 31), {"coordinates": "asymmetric", "labels_dtype": "int32"}),
            ((1, 5, 10, 12), (17, 20), {"scales": (1.7, 1.7)}),
            ((1, 300, 6, 7), (24, 28), {}),  # int32 labels: more classes than uint8 holds
        ]
        for dtype in ("float32", "float16"):
            for shape, size, kwargs in cases:
                scores = rng.normal(size=shape).astype(dtype)
                expected = upsample_argmax(scores, size, **kwargs)
                labels = upsample_argmax_cuda(CudaBuffer.from_numpy(scores), size, **kwargs)
                assert isinstance(labels, CudaBuffer), type(labels)
                assert labels.shape == expected.shape and labels.dtype == expected.dtype, (labels.shape, labels.dtype)
                differ = int((labels.numpy() != expected).sum())
                print(dtype, shape, size, kwargs, "differ", differ, "of", expected.size)
                assert differ == 0, (dtype, shape, kwargs, differ)

        def refused(call, fragment):
            try:
                call()
            except BadInputError as error:
                assert fragment in str(error), str(error)
            else:
                raise AssertionError(f"no BadInputError ({fragment})")

        scores = CudaBuffer.from_numpy(rng.normal(size=(1, 300, 4, 4)).astype(np.float32))
        refused(lambda: upsample_argmax_cuda(scores, (8, 8), labels_dtype="uint8"), "uint8 labels hold at most 256")
        refused(lambda: upsample_argmax_cuda(np.zeros((1, 2, 4, 4), np.float32), (8, 8)), "scores is on the host")
        refused(lambda: upsample_argmax_cuda(CudaBuffer((1, 2, 4, 4), np.int32), (8, 8)), "float32 or float16")
        refused(lambda: upsample_argmax_cuda(scores, (8, 8), coordinates="nearest"), "coordinates must be one of")
        print("ok")
    """)
    result = run_python(emulated_cuda_library, "-c", script)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.rstrip().endswith("ok"), result.stdout


def test_gpu_benchmark_rehearses_the_fused_kernel_and_refuses_without_torch_cuda(emulated_cuda_library, tmp_path):
    """benchmarks/head_gpu.py as a GPU session runs it, on tiny sizes: the fused kernel timed with
    CUDA events and checked against the CPU kernel; the torch comparison needs torch on a GPU and
    stops with one line and exit status 2 where there is none."""
    report = tmp_path / "head_gpu.json"
    result = run_python(emulated_cuda_library, "benchmarks/head_gpu.py", "--fused-only", "--tiny", "--repeats", "1",
                        "--json", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert len(rows) == 8, result.stdout  # 2 sizes x 2 batches x 2 dtypes
    assert all(float(row[-1]) == 1.0 and float(row[-2]) > 0 for row in rows), result.stdout
    assert report.is_file()

    # (CUDA_VISIBLE_DEVICES: on a GPU machine too, torch must see none beside the emulated library)
    refused = run_python(emulated_cuda_library, "benchmarks/head_gpu.py", "--tiny", CUDA_VISIBLE_DEVICES="")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: ") and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
