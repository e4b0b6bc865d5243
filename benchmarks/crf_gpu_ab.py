"""A/B of dense CRF kernel builds on the GPU: runs benchmarks/crf.py with each build in turn
(SEGDEPLOY_KERNELS_LIB), alternating builds round by round, and prints each build's medians and
its ratio to the first build.

CUDA builds compile without a GPU, so a change is measured in one GPU session: build the main
branch's library and the change's on the development machine (nvcc needs no GPU;
benchmarks/build_kernels_at.sh builds commits), carry both to the GPU machine and compare them in
one run:

    CUDA_ARCH=90 bash benchmarks/build_kernels_at.sh builds ceca877 0b6169d   # here
    python benchmarks/crf_gpu_ab.py builds/{ceca877,0b6169d}/libsegdeploy_kernels.so \\
        --image astronaut.npy   # there; the first build is the baseline
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCHMARK = Path(__file__).resolve().with_name("crf.py")
FIGURES = ("full_median_ms", "one_iteration_median_ms", "per_iteration_ms")


def run_build(library: Path, image: str | None, repeats: int, report: Path) -> dict:
    command = [sys.executable, str(BENCHMARK), "--skip-cpu", "--gpu-repeats", str(repeats), "--json", str(report)]
    if image:
        command += ["--image", image]
    env = {**os.environ, "SEGDEPLOY_KERNELS_LIB": str(library)}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"benchmarks/crf.py failed with {library}:\n{result.stderr[-3000:]}")
    cuda = json.loads(report.read_text()).get("cuda")
    if cuda is None:
        sys.exit(f"{library}: no CUDA device (benchmarks/crf.py said: {result.stdout.strip()})")
    return cuda


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("libraries", nargs="+", type=Path, help="libsegdeploy_kernels.so builds; the first is the baseline")
    parser.add_argument("--image", help="photo (PNG or HxWx3 .npy) instead of scikit-image's astronaut")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each build, alternating")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per run")
    args = parser.parse_args(argv)
    missing = [str(library) for library in args.libraries if not library.is_file()]
    if missing:
        parser.error(f"no such library: {', '.join(missing)}")

    runs: dict[Path, list[dict]] = {library: [] for library in args.libraries}
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(args.rounds):
            for index, library in enumerate(args.libraries):
                report = Path(folder) / f"{round_index}_{index}.json"
                runs[library].append(run_build(library, args.image, args.repeats, report))

    medians = {library: {figure: statistics.median(run[figure] for run in results) for figure in FIGURES}
               for library, results in runs.items()}
    baseline = medians[args.libraries[0]]["full_median_ms"]
    print(f"{'build':<48} {'full ms':>9} {'1 iteration':>12} {'per further':>12} {'labels vs CPU':>14} {'vs first':>9}")
    for library, figures in medians.items():
        agreement = min(run["label_agreement"] for run in runs[library])
        print(f"{str(library):<48} {figures['full_median_ms']:>9.3f} {figures['one_iteration_median_ms']:>12.3f} "
              f"{figures['per_iteration_ms']:>12.3f} {agreement:>14.5f} {figures['full_median_ms'] / baseline:>8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
