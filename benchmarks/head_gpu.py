"""GPU head benchmark (issue 17): the fused upsample + argmax CUDA kernel (segdeploy.head.cuda)
against torch's ``F.interpolate(mode="bilinear", align_corners=False)`` + ``argmax(1)``, FP32 and
FP16 scores, at 512x512 with 21 classes (x4 from 128x128) and 1024x2048 with 19 classes
(Cityscapes, x8 from 128x256), batch 1 and 8.

Both run on torch's current stream on the same device buffers and are timed with CUDA events
around each call, alternating (fused, torch, fused, torch, ...) after a warm-up. Before each
timed call the GPU is kept busy for about a millisecond (``torch.cuda._sleep``), so that the
host has enqueued the whole call before its start event runs: the times are GPU time, not
Python's launch overhead. The table gives the medians, their ratio (torch / fused) and the share
of pixels where the two label maps agree (ties and float16 rounding aside, all of them). Needs a CUDA GPU, torch with CUDA and the
kernels library built with CUDA; without them it stops with exit status 2.

``--fused-only`` times the fused kernel alone on segdeploy's own device buffers (no torch)
against the CPU kernel's labels: what the tests rehearse with the emulated CUDA library
(``--tiny``: small sizes).

    PYTHONPATH=. python benchmarks/head_gpu.py [--repeats 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdeploy import _native  # noqa: E402
from segdeploy.crf import CudaBuffer  # noqa: E402
from segdeploy.head.cuda import upsample_argmax_cuda  # noqa: E402
from segdeploy.head.kernel import upsample_argmax  # noqa: E402

# (name, classes, low-resolution height, width, scale)
CASES = [("512x512x21 x4", 21, 128, 128, 4), ("1024x2048x19 x8", 19, 128, 256, 8)]
TINY_CASES = [("32x32x21 x4", 21, 8, 8, 4), ("40x72x19 x8", 19, 5, 9, 8)]
BATCHES = (1, 8)
TINY_BATCHES = (1, 2)
DTYPES = ("float32", "float16")


class EventTimer:
    """Milliseconds of GPU time of a call on a stream, from two CUDA events of the kernels library."""

    def __init__(self, stream: int | None, busy=None):
        self.lib = _native.load_library()
        self.stream = stream
        self.busy = busy  # enqueues GPU work that outlasts the host's launch of the call
        self.start, self.end = ctypes.c_void_p(), ctypes.c_void_p()
        _native.check(self.lib.sd_cuda_event_create(ctypes.byref(self.start)))
        _native.check(self.lib.sd_cuda_event_create(ctypes.byref(self.end)))

    def time(self, call) -> tuple[float, object]:
        """(milliseconds, what ``call()`` returned)."""
        if self.busy is not None:
            self.busy()
        _native.check(self.lib.sd_cuda_event_record(self.start, self.stream))
        result = call()
        _native.check(self.lib.sd_cuda_event_record(self.end, self.stream))
        milliseconds = ctypes.c_float()
        _native.check(self.lib.sd_cuda_event_elapsed_ms(self.start, self.end, ctypes.byref(milliseconds)))
        return milliseconds.value, result

    def close(self) -> None:
        for event in (self.start, self.end):
            self.lib.sd_cuda_event_destroy(event)


def alternate(timer: EventTimer, calls: dict, repeats: int, warmup: int = 3) -> tuple[dict, dict]:
    """Median milliseconds of each call, the calls timed in turn ``repeats`` times, and what each
    call returned last."""
    for _ in range(warmup):
        for call in calls.values():
            timer.time(call)
    times: dict[str, list[float]] = {name: [] for name in calls}
    results = {}
    for _ in range(repeats):
        for name, call in calls.items():
            milliseconds, results[name] = timer.time(call)
            times[name].append(milliseconds)
    return {name: statistics.median(values) for name, values in times.items()}, results


def torch_head(scores, size):
    """The unfused head as torch runs it: the full-resolution scores, then their argmax."""
    import torch.nn.functional as F

    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False).argmax(1)


def gpu_missing(fused_only: bool) -> str | None:
    """Why the benchmark cannot run here, or None."""
    if _native.cuda_device_count() == 0:
        return (f"no CUDA device for the kernels library (built with CUDA: {_native.built_with_cuda()}); "
                "this benchmark needs a GPU")
    if fused_only:
        return None
    try:
        import torch
    except ImportError:
        return "torch is not installed (the baseline is torch's interpolate + argmax); see --fused-only"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (the baseline is torch's interpolate + argmax on the GPU); see --fused-only"
    return None


def bench_torch(cases, batches, repeats: int, busy_cycles: int) -> list[dict]:
    import torch

    rows = []
    generator = torch.Generator(device="cuda").manual_seed(0)
    timer = EventTimer(torch.cuda.current_stream().cuda_stream,
                       busy=(lambda: torch.cuda._sleep(busy_cycles)) if busy_cycles > 0 else None)
    for name, classes, height, width, scale in cases:
        size = (height * scale, width * scale)
        for batch in batches:
            for dtype in DTYPES:
                scores = torch.randn((batch, classes, height, width), generator=generator, device="cuda",
                                     dtype=getattr(torch, dtype))
                calls = {"fused": partial(upsample_argmax_cuda, scores, size), "torch": partial(torch_head, scores, size)}
                medians, results = alternate(timer, calls, repeats)
                agreement = (results["fused"].long() == results["torch"]).float().mean().item()
                rows.append({"case": name, "batch": batch, "dtype": dtype, "fused_ms": medians["fused"],
                             "torch_ms": medians["torch"], "ratio": medians["torch"] / medians["fused"],
                             "agreement": agreement})
    timer.close()
    return rows


def bench_fused_only(cases, batches, repeats: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    timer = EventTimer(None)
    for name, classes, height, width, scale in cases:
        size = (height * scale, width * scale)
        for batch in batches:
            for dtype in DTYPES:
                host = rng.normal(size=(batch, classes, height, width)).astype(dtype)
                scores = CudaBuffer.from_numpy(host)
                medians, results = alternate(timer, {"fused": partial(upsample_argmax_cuda, scores, size)}, repeats,
                                             warmup=1)
                agreement = float((results["fused"].numpy() == upsample_argmax(host, size)).mean())
                rows.append({"case": name, "batch": batch, "dtype": dtype, "fused_ms": medians["fused"],
                             "agreement_cpu": agreement})
    timer.close()
    return rows


def print_table(rows: list[dict]) -> None:
    if "torch_ms" in rows[0]:
        print(f"{'case':<18} {'batch':>5} {'dtype':<8} {'fused ms':>9} {'torch ms':>9} {'torch/fused':>11} "
              f"{'agree':>8}")
        for r in rows:
            print(f"{r['case']:<18} {r['batch']:>5} {r['dtype']:<8} {r['fused_ms']:>9.3f} {r['torch_ms']:>9.3f} "
                  f"{r['ratio']:>10.2f}x {r['agreement']:>8.5f}")
    else:
        print(f"{'case':<18} {'batch':>5} {'dtype':<8} {'fused ms':>9} {'agree (CPU)':>12}")
        for r in rows:
            print(f"{r['case']:<18} {r['batch']:>5} {r['dtype']:<8} {r['fused_ms']:>9.3f} {r['agreement_cpu']:>12.5f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls of each implementation per setting")
    parser.add_argument("--fused-only", action="store_true",
                        help="time the fused kernel alone, without torch, checked against the CPU kernel")
    parser.add_argument("--tiny", action="store_true", help="small sizes (a rehearsal, e.g. under emulation)")
    parser.add_argument("--busy-cycles", type=int, default=2_000_000,
                        help="GPU clock cycles of busy work before each timed call (0: none; torch mode)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    reason = gpu_missing(args.fused_only)
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    cases, batches = (TINY_CASES, TINY_BATCHES) if args.tiny else (CASES, BATCHES)
    if args.fused_only:
        rows = bench_fused_only(cases, batches, args.repeats)
    else:
        rows = bench_torch(cases, batches, args.repeats, args.busy_cycles)
    print_table(rows)
    if args.json:
        from segdeploy.fileio import write_json

        write_json(args.json, {"rows": rows, "repeats": args.repeats})
    return 0


if __name__ == "__main__":
    sys.exit(main())
