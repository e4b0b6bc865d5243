"""GPU depthwise benchmark (issue 18): ``ReLU(depthwise conv + bias)`` by segdeploy's CUDA kernel
(``sd_depthwise_conv_cuda``, bias and ReLU fused) against cuDNN through torch (``F.conv2d`` with groups ==
channels, then ``relu_``), NCHW and channels_last, FP32 and FP16, for every depthwise layer shape of the
zoo's DeepLab models at 512x512 (``benchmarks/plugins_layers.py``'s list, traced the same way).

All run on torch's current stream on the same device tensors and are timed with CUDA events around
each call, alternating (ours, cuDNN, cuDNN channels_last, ours, ...) after a warm-up, with the GPU
kept busy for about a millisecond before each timed call (``torch.cuda._sleep``) so that the times
are GPU time, not Python's launch overhead (see ``benchmarks/head_gpu.py``). cuDNN picks its fastest
algorithm (``torch.backends.cudnn.benchmark``). The table gives the medians, the ratios cuDNN / ours
(> 1: ours is faster) and ours' largest difference from cuDNN NCHW relative to its largest output.
Needs a CUDA GPU, torch with CUDA and the kernels library built with CUDA; without them it stops
with exit status 2.

    PYTHONPATH=. python benchmarks/plugins_gpu.py [--repeats 50] [--batch 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from segdeploy import _native  # noqa: E402

DTYPES = ("float32", "float16")


def gpu_missing() -> str | None:
    """Why the benchmark cannot run here, or None."""
    if _native.cuda_device_count() == 0:
        return (f"no CUDA device for the kernels library (built with CUDA: {_native.built_with_cuda()}); "
                "this benchmark needs a GPU")
    try:
        import torch
    except ImportError:
        return "torch is not installed (the baseline is cuDNN through torch)"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (the baseline is cuDNN through torch on the GPU)"
    return None


def ours(layer, x, weight, bias, out) -> None:
    """ReLU(depthwise conv + bias) by sd_depthwise_conv_cuda on torch's tensors, on torch's current stream."""
    import torch
    from plugins_layers import RELU_UPPER

    from segdeploy.conv._binding import ACTIVATIONS, DTYPES, SdActivation, SdDepthwiseConvIO

    io = SdDepthwiseConvIO(x.data_ptr(), DTYPES[str(x.dtype).removeprefix("torch.")], *x.shape, *layer.kernel,
                           *layer.stride, *layer.dilation, *layer.pads, weight.data_ptr(), bias.data_ptr(),
                           SdActivation(ACTIVATIONS["clip"], 0.0, RELU_UPPER), out.data_ptr(), *out.shape[2:])
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    _native.check(_native.load_library().sd_depthwise_conv_cuda(ctypes.byref(io), stream))


def cudnn(layer, x, weight, bias):
    """The same as torch runs it: cuDNN's depthwise convolution (uneven pads by F.pad first), then ReLU in place."""
    import torch.nn.functional as F

    top, left, bottom, right = layer.pads
    if (top, left) != (bottom, right):
        x, padding = F.pad(x, (left, right, top, bottom)), 0
    else:
        padding = (top, left)
    return F.relu_(F.conv2d(x, weight, bias, layer.stride, padding, layer.dilation, groups=x.shape[1]))


def bench(layers: dict, batch: int, repeats: int, busy_cycles: int) -> list[dict]:
    import torch
    from head_gpu import EventTimer, alternate
    from plugins_layers import SHORT

    torch.backends.cudnn.benchmark = True
    generator = torch.Generator(device="cuda").manual_seed(0)
    timer = EventTimer(torch.cuda.current_stream().cuda_stream,
                       busy=(lambda: torch.cuda._sleep(busy_cycles)) if busy_cycles > 0 else None)
    rows = []
    for layer, counts in layers.items():
        name = f"{layer.label()} ({', '.join(f'{SHORT.get(m, m)}×{n}' for m, n in counts.items())})"
        for dtype in DTYPES:
            kind = getattr(torch, dtype)
            x = torch.randn((batch, layer.channels, layer.height, layer.width), generator=generator, device="cuda",
                            dtype=kind)
            weight = torch.randn((layer.channels, 1, *layer.kernel), generator=generator, device="cuda", dtype=kind) / 3
            bias = torch.randn((layer.channels,), generator=generator, device="cuda", dtype=kind)
            expected = cudnn(layer, x, weight, bias)
            out = torch.empty_like(expected)
            x_cl, w_cl = x.contiguous(memory_format=torch.channels_last), weight.contiguous(memory_format=torch.channels_last)
            calls = {"ours": partial(ours, layer, x, weight, bias, out), "cudnn": partial(cudnn, layer, x, weight, bias),
                     "cudnn_cl": partial(cudnn, layer, x_cl, w_cl, bias)}
            medians, _ = alternate(timer, calls, repeats)
            torch.cuda.synchronize()
            scale = expected.abs().max().float().item() or 1.0
            error = (out.float() - expected.float()).abs().max().item() / scale
            moved = (x.numel() + out.numel()) * x.element_size()
            rows.append({"layer": name, "dtype": dtype, "batch": batch, "ours_ms": medians["ours"],
                         "cudnn_ms": medians["cudnn"], "cudnn_cl_ms": medians["cudnn_cl"],
                         "ratio": medians["cudnn"] / medians["ours"], "ratio_cl": medians["cudnn_cl"] / medians["ours"],
                         "ours_gbps": moved / medians["ours"] / 1e6, "error": error})
    timer.close()
    return rows


def print_table(rows: list[dict], device: str) -> None:
    from readme_blocks import provenance

    print(f"{'layer':<60} {'dtype':<8} {'ours ms':>8} {'cuDNN':>8} {'cuDNN cl':>8} {'cuDNN/ours':>10} "
          f"{'cl/ours':>8} {'ours GB/s':>9} {'max|d|':>8}")
    for r in rows:
        print(f"{r['layer']:<60} {r['dtype']:<8} {r['ours_ms']:>8.4f} {r['cudnn_ms']:>8.4f} {r['cudnn_cl_ms']:>8.4f} "
              f"{r['ratio']:>9.2f}x {r['ratio_cl']:>7.2f}x {r['ours_gbps']:>9.0f} {r['error']:>8.1e}")
    print(provenance("python benchmarks/plugins_gpu.py", device))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls of each implementation per setting")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--models", help="comma-separated zoo names (default: plugins_layers.py's)")
    parser.add_argument("--size", type=int, default=512, help="input size (square) at which the layers are traced")
    parser.add_argument("--busy-cycles", type=int, default=2_000_000,
                        help="GPU clock cycles of busy work before each timed call (0: none)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1:
        parser.error("--repeats and --batch must be >= 1")
    reason = gpu_missing()
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    import torch
    from plugins_layers import MODELS, collect_layers

    device = torch.cuda.get_device_name()
    models = args.models.split(",") if args.models else list(MODELS)
    layers, _ = collect_layers(models, args.size, progress=lambda m: print(m, file=sys.stderr))
    rows = bench(layers, args.batch, args.repeats, args.busy_cycles)
    print_table(rows, f"{device}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    if args.json:
        from segdeploy.fileio import write_json

        write_json(args.json, {"rows": rows, "repeats": args.repeats, "batch": args.batch, "device": device})
    return 0


if __name__ == "__main__":
    sys.exit(main())
