"""Dense CRF benchmark: segdeploy's CPU kernel against pydensecrf2 (the reference) in one run, and
the CUDA kernel timed with CUDA events when a GPU is present.

Setting (issue 6): a 512x512 real photo (scikit-image's astronaut, or --image), 21 classes,
a noisy unary (segdeploy.crf.synthetic_logits), 10 iterations, DeepLab v2 parameters
(spatial 3/3, bilateral 4/67/3). Reports medians, the CPU speed-up as a ratio of medians, and
the agreement of each implementation with the reference (label agreement, mean |dQ|), and what
running the CRF as an ONNX Runtime node (export --crf) costs over calling the kernel directly.
The portable CPU build (baseline instruction set, float32 lattice: what ARM CPUs such as a Jetson's
run; forced by SEGDEPLOY_CPU_PORTABLE=1) is timed in the same alternation and its ratio printed
beside the dispatched build's.

    PYTHONPATH=. python benchmarks/crf.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from readme_blocks import provenance, replace_block  # noqa: E402  (beside this script)

from segdeploy import _native  # noqa: E402
from segdeploy.crf import CRFParams, CudaBuffer, _binding, dense_crf, synthetic_logits, workspace_bytes  # noqa: E402

PARAMS = CRFParams()  # DeepLab v2
CLASSES = 21


def load_image(path: str | None) -> tuple[np.ndarray, str]:
    if path and path.endswith(".npy"):
        return np.ascontiguousarray(np.load(path), np.uint8), path
    if path:
        from PIL import Image

        return np.ascontiguousarray(Image.open(path).convert("RGB")), path
    try:
        from skimage.data import astronaut
    except ImportError:
        sys.exit("scikit-image is not installed: pass the benchmark photo with --image (PNG or .npy, HxWx3 uint8)")
    return np.ascontiguousarray(astronaut()), "skimage.data.astronaut"


def pydensecrf_run(unary_energy: np.ndarray, image: np.ndarray):
    import pydensecrf.densecrf as dcrf

    classes, height, width = unary_energy.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_energy.reshape(classes, -1)))
    crf.addPairwiseGaussian(sxy=PARAMS.spatial_theta, compat=PARAMS.spatial_weight)
    crf.addPairwiseBilateral(sxy=PARAMS.bilateral_theta_xy, srgb=PARAMS.bilateral_theta_rgb, rgbim=image,
                             compat=PARAMS.bilateral_weight)
    return np.array(crf.inference(PARAMS.iterations), np.float32).reshape(classes, height, width)


def agreement(probabilities: np.ndarray, reference: np.ndarray) -> dict:
    return {"label_agreement": float((probabilities.argmax(0) == reference.argmax(0)).mean()),
            "mean_abs_dq": float(np.abs(probabilities - reference).mean())}


def portable_crf(logits, image, threads: int) -> np.ndarray:
    """The CRF on the portable CPU build: the library reads SEGDEPLOY_CPU_PORTABLE at each call."""
    previous = os.environ.get("SEGDEPLOY_CPU_PORTABLE")
    os.environ["SEGDEPLOY_CPU_PORTABLE"] = "1"
    try:
        return dense_crf(logits, image, PARAMS, output="probabilities", num_threads=threads)
    finally:
        if previous is None:
            del os.environ["SEGDEPLOY_CPU_PORTABLE"]
        else:
            os.environ["SEGDEPLOY_CPU_PORTABLE"] = previous


def time_cpu(logits, image, repeats: int, threads: int) -> dict:
    """Ours (the dispatched build and the portable one) and, when installed, pydensecrf2,
    alternating so that all see the same machine load."""
    have_reference = importlib.util.find_spec("pydensecrf") is not None
    ours, portable, reference_times = [], [], []
    probabilities = portable_probabilities = reference = None
    load_before = os.getloadavg()
    for _ in range(repeats):
        if have_reference:
            started = time.perf_counter()
            reference = pydensecrf_run(-logits, image)
            reference_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        probabilities = dense_crf(logits, image, PARAMS, output="probabilities", num_threads=threads)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        portable_probabilities = portable_crf(logits, image, threads)
        portable.append(time.perf_counter() - started)
    result = {"threads": threads or os.cpu_count(), "segdeploy_ms": [t * 1e3 for t in ours],
              "segdeploy_median_ms": statistics.median(ours) * 1e3,
              "portable_ms": [t * 1e3 for t in portable], "portable_median_ms": statistics.median(portable) * 1e3,
              # The machine's load (1-minute average) before and after: other processes share the cores.
              "load_before": load_before[0], "load_after": os.getloadavg()[0], "cores": os.cpu_count()}
    if have_reference:
        result.update(pydensecrf2_ms=[t * 1e3 for t in reference_times],
                      pydensecrf2_median_ms=statistics.median(reference_times) * 1e3,
                      speedup=statistics.median(reference_times) / statistics.median(ours),
                      portable_speedup=statistics.median(reference_times) / statistics.median(portable),
                      portable_agreement=agreement(portable_probabilities, reference),
                      **agreement(probabilities, reference))
    return result, probabilities


def time_onnx_node(logits, image, repeats: int) -> dict | None:
    """The DenseCRF node run by ONNX Runtime against the kernel called directly, alternating."""
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxruntime_extensions") is None:
        return None
    import onnxruntime
    from onnx import TensorProto, helper

    from segdeploy.crf import append_crf_node, register_crf_ort

    shape = [1, *logits.shape]
    graph = helper.make_graph([helper.make_node("Identity", ["scores"], ["logits"])], "crf_only",
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)])
    model = append_crf_node(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), **PARAMS.__dict__)
    session = onnxruntime.InferenceSession(model.SerializeToString(), register_crf_ort(onnxruntime.SessionOptions()),
                                           providers=["CPUExecutionProvider"])
    feed = {"scores": logits[None], "image": image[None]}
    session.run(None, feed)  # warm-up
    node, direct = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        node.append(time.perf_counter() - started)
        started = time.perf_counter()
        dense_crf(logits[None], image[None], PARAMS)
        direct.append(time.perf_counter() - started)
    return {"onnx_node_median_ms": statistics.median(node) * 1e3, "direct_median_ms": statistics.median(direct) * 1e3,
            "overhead_ratio": statistics.median(node) / statistics.median(direct)}


def time_cuda(logits, image, repeats: int, cpu_probabilities: np.ndarray, profile: bool) -> dict:
    """sd_crf_cuda on preallocated device buffers, timed with CUDA events around each call; with
    ``profile``, one more call prints the GPU time of each phase (SD_CRF_PROFILE) to stderr."""
    lib = _native.load_library()
    classes, height, width = logits.shape
    unary, rgb = CudaBuffer.from_numpy(logits), CudaBuffer.from_numpy(image)
    probabilities = CudaBuffer((classes, height, width), np.float32)
    labels = CudaBuffer((height, width), np.int32)
    size = ctypes.c_size_t()
    _native.check(lib.sd_crf_cuda_workspace_bytes(classes, height, width, ctypes.byref(size)))
    workspace = CudaBuffer((size.value,), np.uint8)
    io = _binding.SdCrfIO(unary.pointer, _binding.SD_DTYPE_FLOAT32, _binding.UNARY_KINDS["logits"], rgb.pointer,
                          _binding.SD_IMAGE_HWC, 1, classes, height, width, probabilities.pointer, labels.pointer)
    start, end = ctypes.c_void_p(), ctypes.c_void_p()
    _native.check(lib.sd_cuda_event_create(ctypes.byref(start)))
    _native.check(lib.sd_cuda_event_create(ctypes.byref(end)))

    def timed(params: CRFParams) -> float:
        c_params = params.to_c()
        _native.check(lib.sd_cuda_event_record(start, None))
        _native.check(lib.sd_crf_cuda(ctypes.byref(c_params), ctypes.byref(io), workspace.pointer, workspace.nbytes,
                                      0, None))
        _native.check(lib.sd_cuda_event_record(end, None))
        milliseconds = ctypes.c_float()
        _native.check(lib.sd_cuda_event_elapsed_ms(start, end, ctypes.byref(milliseconds)))
        return milliseconds.value

    result = {"workspace_mib": size.value / 2**20}
    for label, iterations in (("one_iteration", 1), ("full", PARAMS.iterations)):
        params = CRFParams(**{**PARAMS.__dict__, "iterations": iterations})
        for _ in range(3):
            timed(params)  # warm-up; from the second call on, the library replays a CUDA graph
        times = [timed(params) for _ in range(repeats)]
        result[f"{label}_ms"] = times
        result[f"{label}_median_ms"] = statistics.median(times)
    result["per_iteration_ms"] = (result["full_median_ms"] - result["one_iteration_median_ms"]) / (PARAMS.iterations - 1)
    if profile:
        print(f"CUDA phases of one call ({PARAMS.iterations} iterations, launched one by one: profiling "
              "turns graph replay off), summed over iterations:", flush=True)
        os.environ["SD_CRF_PROFILE"] = "1"  # read by the library at each call
        try:
            timed(PARAMS)
        finally:
            del os.environ["SD_CRF_PROFILE"]
    result.update(agreement(probabilities.numpy(), cpu_probabilities))
    for event in (start, end):
        lib.sd_cuda_event_destroy(event)
    return result


# The GPU workspace at the two sizes (this benchmark's, and a Cityscapes frame's).
WORKSPACE_SHAPES = (((512, 512), 21), ((1024, 2048), 19))

_CPU_PEAK_SCRIPT = """
import sys
import numpy as np
from segdeploy import _native
from segdeploy.crf import CRFParams, dense_crf
def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))
logits, image = np.load(sys.argv[1] + "/logits.npy"), np.load(sys.argv[1] + "/image.npy")
_native.load_library()
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as peak:
    peak.write("5")  # the peak (VmHWM) starts again from what is resident now
dense_crf(logits, image, CRFParams(), output="probabilities", num_threads=int(sys.argv[2]))
print(status("VmHWM:") - before)
"""


def cpu_peak_memory(logits, image, threads: int) -> dict | None:
    """Resident memory one CPU call adds at its peak, in a fresh process (the library keeps a thread's
    scratch between calls, so a warm process shows less), against the call's tensors: the unary and
    the image in, the probabilities out. None where /proc cannot tell (not Linux)."""
    import subprocess
    import tempfile

    if not Path("/proc/self/clear_refs").exists():
        return None
    with tempfile.TemporaryDirectory() as folder:
        np.save(f"{folder}/logits.npy", logits)
        np.save(f"{folder}/image.npy", image)
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        run = subprocess.run([sys.executable, "-c", _CPU_PEAK_SCRIPT, folder, str(threads)], capture_output=True,
                             text=True, timeout=600, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"the CPU peak-memory run failed: {run.stderr[-2000:]}")
    peak = int(run.stdout.split()[-1])
    tensors = logits.nbytes + image.nbytes + logits.nbytes  # probabilities: float32, the unary's shape
    entries = 9 * logits.shape[1] * logits.shape[2]  # lattice entries: 6 per pixel bilateral, 3 spatial
    return {"cpu_peak_mib": peak / 2**20, "tensors_mib": tensors / 2**20,
            "beyond_twice_tensors_mib": (peak - 2 * tensors) / 2**20,
            "beyond_twice_tensors_bytes_per_entry": (peak - 2 * tensors) / entries}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", help="photo to use instead of scikit-image's astronaut (PNG or HxWx3 .npy)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per implementation (CPU)")
    parser.add_argument("--gpu-repeats", type=int, default=20, help="timed runs on the GPU")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for segdeploy (0: all cores)")
    parser.add_argument("--skip-cpu", action="store_true", help="time the GPU only (checked against one CPU run)")
    parser.add_argument("--gpu-profile", action="store_true",
                        help="also print the GPU time of each phase (lattice build steps, splat, blur, slice)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--readme", action="store_true", help="write the README's crf-table block from this run")
    args = parser.parse_args(argv)

    image, source = load_image(args.image)
    logits = synthetic_logits(image, CLASSES, seed=0)
    report = {"image": source, "shape": list(logits.shape), "params": PARAMS.__dict__}
    if args.skip_cpu:
        cpu_probabilities = dense_crf(logits, image, PARAMS, output="probabilities", num_threads=args.threads)
    else:
        report["cpu"], cpu_probabilities = time_cpu(logits, image, args.repeats, args.threads)
        cpu = report["cpu"]
        line = f"CPU ({cpu['threads']} threads): segdeploy median {cpu['segdeploy_median_ms']:.1f} ms"
        if "speedup" in cpu:
            line += (f", pydensecrf2 median {cpu['pydensecrf2_median_ms']:.1f} ms, speed-up x{cpu['speedup']:.2f}; "
                     f"vs reference: labels {cpu['label_agreement']:.5f}, mean |dQ| {cpu['mean_abs_dq']:.2e}")
        else:
            line += " (pydensecrf2 not installed: no reference timing)"
        line += f"; load average {cpu['load_before']:.2f} -> {cpu['load_after']:.2f} on {cpu['cores']} cores"
        print(line)
        line = f"CPU portable build (SEGDEPLOY_CPU_PORTABLE=1, as on ARM): median {cpu['portable_median_ms']:.1f} ms"
        if "speedup" in cpu:
            portable_agreement = cpu["portable_agreement"]
            line += (f", speed-up x{cpu['portable_speedup']:.2f} (dispatched build x{cpu['speedup']:.2f}); "
                     f"vs reference: labels {portable_agreement['label_agreement']:.5f}, "
                     f"mean |dQ| {portable_agreement['mean_abs_dq']:.2e}")
        print(line)
        report["onnx_node"] = node = time_onnx_node(logits, image, args.repeats)
        if node is None:
            print("ONNX Runtime node: onnxruntime or onnxruntime-extensions not installed; not timed")
        else:
            print(f"ONNX Runtime DenseCRF node: median {node['onnx_node_median_ms']:.1f} ms against "
                  f"{node['direct_median_ms']:.1f} ms for the kernel called directly (x{node['overhead_ratio']:.2f})")
    if _native.cuda_device_count() > 0:
        report["cuda"] = gpu = time_cuda(logits, image, args.gpu_repeats, cpu_probabilities, args.gpu_profile)
        print(f"CUDA: {gpu['full_median_ms']:.3f} ms median for {PARAMS.iterations} iterations "
              f"(1 iteration {gpu['one_iteration_median_ms']:.3f} ms, {gpu['per_iteration_ms']:.3f} ms per further "
              f"iteration; workspace {gpu['workspace_mib']:.0f} MiB; replayed from a CUDA graph); vs CPU: labels "
              f"{gpu['label_agreement']:.5f}, "
              f"mean |dQ| {gpu['mean_abs_dq']:.2e}")
    else:
        print(f"CUDA: no device (kernels built with CUDA: {_native.built_with_cuda()}); not timed")
    memory = report["memory"] = {}
    if _native.cuda_device_count() > 0:
        memory["cuda_workspace_mib"] = {f"{h}x{w}x{c}": workspace_bytes((h, w), c) / 2**20
                                        for (h, w), c in WORKSPACE_SHAPES}
        print("CUDA workspace (one bound per shape, any image): " + ", ".join(
            f"{mib:.0f} MiB at {shape}" for shape, mib in memory["cuda_workspace_mib"].items()))
    if not args.skip_cpu and (peak := cpu_peak_memory(logits, image, args.threads)) is not None:
        memory.update(peak)
        print(f"CPU peak memory of one call: {peak['cpu_peak_mib']:.0f} MiB = 2 x {peak['tensors_mib']:.0f} MiB "
              f"of tensors (unary, image, probabilities) + {peak['beyond_twice_tensors_mib']:.0f} MiB "
              f"({peak['beyond_twice_tensors_bytes_per_entry']:.0f} bytes per lattice entry)")
    if args.json:
        from segdeploy.fileio import write_json

        write_json(args.json, report)
    if args.readme:
        print(f"written to {replace_block('crf-table', readme_table(report, args.repeats))}", file=sys.stderr)
    return 0


def readme_table(report: dict, repeats: int) -> str:
    """The README's crf-table block: the rows this run measured, ratios taken within the run."""
    height, width = report["shape"][1:]
    lines = [f"Dense CRF on a {width}×{height} photo ({report['image']}), {CLASSES} classes, noisy unary, DeepLab v2 "
             f"parameters, {PARAMS.iterations} iterations; medians of {repeats} runs alternating with the reference:",
             "", "| implementation | median | vs pydensecrf2 | agreement |", "| --- | ---: | ---: | --- |"]
    cpu, node, gpu = report.get("cpu"), report.get("onnx_node"), report.get("cuda")
    if cpu and "speedup" in cpu:
        lines.append(f"| pydensecrf2 (reference), 1 core | {cpu['pydensecrf2_median_ms']:.0f} ms | 1.00× | — |")
    if cpu:
        speedup = f"**{cpu['speedup']:.2f}×**" if "speedup" in cpu else "—"
        agree = (f"labels {cpu['label_agreement']:.3%}, mean \\|ΔQ\\| {cpu['mean_abs_dq']:.1e}"
                 if "speedup" in cpu else "—")
        lines.append(f"| segdeploy CPU, {cpu['threads']} threads | {cpu['segdeploy_median_ms']:.0f} ms | {speedup} | {agree} |")
        portable_speedup = f"{cpu['portable_speedup']:.2f}×" if "speedup" in cpu else "—"
        lines.append(f"| segdeploy CPU, portable build (as on ARM), {cpu['threads']} threads | "
                     f"{cpu['portable_median_ms']:.0f} ms | {portable_speedup} | — |")
    if node:
        lines.append(f"| segdeploy CPU as an ONNX Runtime node | {node['onnx_node_median_ms']:.0f} ms | "
                     f"×{node['overhead_ratio']:.2f} of a direct call | same |")
    if gpu:
        lines.append(f"| segdeploy CUDA | {gpu['full_median_ms']:.2f} ms | — | labels vs CPU {gpu['label_agreement']:.3%} |")
    lines += ["", provenance("python benchmarks/crf.py --readme")]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
