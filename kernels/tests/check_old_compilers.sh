#!/usr/bin/env bash
# Compiles every kernel source with the oldest compilers installable here, strictly as C++17, to
# catch what JetPack's toolchains reject: JetPack 5 builds with GCC 9 + CUDA 11.4's nvcc, JetPack 6
# with GCC 11 + CUDA 12.6's nvcc (docs/jetson_build.md). Stages (all by default):
#   gxx      oldest g++ (g++-9, -10 or -11): the library, the C++ tests and, where CUDA's headers
#            are installed, the emulated CUDA library (which compiles the .cu files as C++), with
#            -std=c++17 -pedantic-errors -Werror (C++20 syntax is an error, not an extension)
#   clang    oldest clang++ (13 to 15), the same (CUDA's own headers need -Wno-gnu-zero-variadic-macro-arguments)
#   nvcc     the CUDA sources (and the TensorRT plugins where TENSORRT_INCLUDE_DIR names headers)
#            through nvcc -std=c++17 -ccbin <oldest g++>, host warnings as errors (no -pedantic:
#            nvcc's generated host code uses GNU line markers); PTX for sm_87 only, no GPU needed
#   builtins the compiler builtins that GCC 9 lacks (__builtin_bit_cast: GCC 11; __builtin_shufflevector:
#            GCC 12) in what an aarch64 build compiles, i.e. each source preprocessed by
#            aarch64-linux-gnu-g++ with the build's flags (Debian has no g++-9 to try directly)
#
#   kernels/tests/check_old_compilers.sh [BUILD_PREFIX] [STAGE...]
#
# BUILD_PREFIX (default build/old-compilers-) + stage name is each stage's build folder. Prints one
# line per stage and exits non-zero if any stage fails; a stage whose compiler is missing is skipped.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
prefix="${1:-$root/build/old-compilers-}"
shift $(( $# > 0 ? 1 : 0 ))
stages=("$@")
(( ${#stages[@]} )) || stages=(gxx clang nvcc builtins)
jobs="${JOBS:-2}"
unset CFLAGS CXXFLAGS CUDAFLAGS LDFLAGS  # the checks' flags only

first_found() {  # the first command of the arguments that exists
  local name
  for name in "$@"; do
    if command -v "$name" >/dev/null; then command -v "$name"; return 0; fi
  done
  return 1
}
gxx="$(first_found g++-9 g++-10 g++-11)"
clangxx="$(first_found clang++-13 clang++-14 clang++-15)"

status=0
report() {  # stage, start time, exit status, what was checked
  local result=passed
  (( $3 == 0 )) || { result=FAILED; status=1; }
  printf '%-8s %-6s %4d s  %s\n' "$1" "$result" $(( SECONDS - $2 )) "$4"
}

# Configures and builds into ${prefix}$1 (arguments after $1: cmake options); the log is in the
# build folder and its errors are printed on failure.
build() {
  local dir="${prefix}$1"
  shift
  rm -rf "$dir"
  mkdir -p "$dir"
  if cmake -S "$root" -B "$dir" -DCMAKE_CXX_EXTENSIONS=OFF -DCMAKE_CUDA_EXTENSIONS=OFF "$@" >"$dir/check.log" 2>&1 &&
     cmake --build "$dir" -j "$jobs" -- -k >>"$dir/check.log" 2>&1; then
    return 0
  fi
  grep -E 'error|Error' "$dir/check.log" | head -n 40
  return 1
}

cxx_strict="-pedantic-errors -Werror"
for stage in "${stages[@]}"; do
  start=$SECONDS
  case "$stage" in
    gxx)
      if [[ -z "$gxx" ]]; then echo "gxx      skipped (no g++-9, g++-10 or g++-11)"; continue; fi
      build gxx -DCMAKE_CXX_COMPILER="$gxx" -DCMAKE_C_COMPILER="${gxx/g++/gcc}" -DSEGDEPLOY_WITH_CUDA=OFF \
        -DSEGDEPLOY_BUILD_TESTS=ON "-DCMAKE_CXX_FLAGS=$cxx_strict"
      report gxx "$start" $? "$("$gxx" -dumpfullversion): library, C++ tests, emulated CUDA; -std=c++17 $cxx_strict"
      ;;
    clang)
      if [[ -z "$clangxx" ]]; then echo "clang    skipped (no clang++-13, -14 or -15)"; continue; fi
      build clang -DCMAKE_CXX_COMPILER="$clangxx" -DCMAKE_C_COMPILER="${clangxx/clang++/clang}" \
        -DSEGDEPLOY_WITH_CUDA=OFF -DSEGDEPLOY_BUILD_TESTS=ON \
        "-DCMAKE_CXX_FLAGS=$cxx_strict -Wno-gnu-zero-variadic-macro-arguments"
      report clang "$start" $? "$(basename "$clangxx"): library, C++ tests, emulated CUDA; -std=c++17 $cxx_strict"
      ;;
    nvcc)
      if [[ -z "$gxx" ]] || ! command -v nvcc >/dev/null; then echo "nvcc     skipped (no nvcc or old g++)"; continue; fi
      # CUDAHOSTCXX, not CMAKE_CUDA_HOST_COMPILER: check_language(CUDA) drops the latter (CMake 3.25).
      trt=()
      [[ -n "${TENSORRT_INCLUDE_DIR:-}" ]] && trt=(-DSEGDEPLOY_TENSORRT_INCLUDE_DIR="$TENSORRT_INCLUDE_DIR")
      CUDAHOSTCXX="$gxx" build nvcc -DCMAKE_CXX_COMPILER="$gxx" -DCMAKE_C_COMPILER="${gxx/g++/gcc}" \
        -DCMAKE_CUDA_ARCHITECTURES=87-virtual "-DCMAKE_CXX_FLAGS=$cxx_strict" \
        "-DCMAKE_CUDA_FLAGS=-Werror=all-warnings -Xcompiler=-Werror" "${trt[@]}"
      result=$?
      plugins="no TensorRT plugins (set TENSORRT_INCLUDE_DIR)"
      [[ -f "${prefix}nvcc/kernels/libsegdeploy_trt_plugin.so" ]] && plugins="TensorRT plugins"
      report nvcc "$start" $result "$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/CUDA \1/p') -std=c++17 -ccbin $(basename "$gxx"): library, $plugins"
      ;;
    builtins)
      if ! command -v aarch64-linux-gnu-g++ >/dev/null; then echo "builtins skipped (no aarch64-linux-gnu-g++)"; continue; fi
      dir="${prefix}builtins"
      rm -rf "$dir"
      result=0
      cmake -S "$root" -B "$dir" -DCMAKE_TOOLCHAIN_FILE="$root/kernels/cmake/toolchain-aarch64.cmake" \
        -DSEGDEPLOY_WITH_CUDA=OFF -DSEGDEPLOY_BUILD_TESTS=ON -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >"$dir.log" 2>&1 || result=1
      # Each compile command with -E instead of -c -o: the code that GCC 9 would compile, comments gone.
      if (( result == 0 )); then
        python3 - "$dir/compile_commands.json" <<'PY' || result=1
import json, re, shlex, subprocess, sys
too_new = {"__builtin_bit_cast": "GCC 11", "__builtin_shufflevector": "GCC 12"}
failed = False
for entry in json.load(open(sys.argv[1])):
    words = shlex.split(entry["command"])
    drop = {i for i, w in enumerate(words) if w in ("-o", "-MF", "-MT")}
    words = [w for i, w in enumerate(words) if i not in drop and i - 1 not in drop and w not in ("-c", "-MD")]
    text = subprocess.run([*words, "-E", "-P"], cwd=entry["directory"], capture_output=True, text=True, check=True).stdout
    for name, since in too_new.items():
        if re.search(r"\b" + name + r"\b", text):
            print(f"{entry['file']}: {name} (needs {since}; JetPack 5 has GCC 9)")
            failed = True
sys.exit(1 if failed else 0)
PY
      fi
      report builtins "$start" $result "aarch64 sources free of builtins newer than GCC 9"
      ;;
    *)
      echo "unknown stage $stage (gxx, clang, nvcc, builtins)" >&2
      exit 2
      ;;
  esac
done
exit $status
