// The CUDA upsample + argmax (sd_upsample_argmax_cuda) against the CPU driver
// (sd_upsample_argmax_cpu), through the C ABI. Built twice: against segdeploy_kernels_emulated_cuda
// (SD_TEST_EMULATED_CUDA: the kernel runs on the host, tests/cuda_emulation.h), and against the
// real library, where it runs on a GPU (and skips without one).
//
// Both drivers compute the same taps and weights (head/upsample_argmax_common.h) and blend in the
// same order, but the CPU's build contracts products into FMAs and the emulated one does not, so
// values may differ in the last bits: labels must be identical except where the two classes'
// values are a near-exact tie. Each mismatch is checked against a float64 interpolation with the
// same taps (its two classes within kTieTolerance of each other, and of the float64 maximum),
// and the ties are counted and printed. Scores that are small multiples of a power of two make
// every operation exact: there the labels must be identical, ties (first maximum wins) included.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../head/upsample_argmax_common.h"
#include "segdeploy/cuda.h"
#include "segdeploy/upsample_argmax.h"
#include "test_support.h"

namespace {

// A near-exact tie: the two classes' float64 values within this much of each other, relative to
// their magnitude (float32 rounding of three blends is ~1e-7 of it).
constexpr double kTieTolerance = 1e-5;

struct Case {
  std::string name;
  int32_t batch = 1, classes = 21, in_height = 16, in_width = 16, out_height = 64, out_width = 64;
  int32_t coordinates = SD_RESIZE_HALF_PIXEL;
  float scale_height = 0.0f, scale_width = 0.0f;
  int32_t scores_dtype = SD_DTYPE_FLOAT32, labels_dtype = SD_LABELS_UINT8;
  bool exact = false;  // scores in multiples of 1/8: every blend exact, labels identical
  uint32_t seed = 1;
};

struct Run {
  std::vector<float> scores32;
  std::vector<uint16_t> scores16;
  std::vector<int32_t> cpu, cuda;
  int cpu_status = -1, cuda_status = -1;
  bool enqueued_without_waiting = false;
};

// The drivers' arguments for case k, with these scores and labels.
sd_upsample_argmax_io io_of(const Case& k, const void* scores, void* labels) {
  return {scores, k.scores_dtype, k.batch, k.classes, k.in_height, k.in_width, k.out_height, k.out_width,
          k.coordinates, k.scale_height, k.scale_width, labels, k.labels_dtype};
}

double score_at(const Case& k, const Run& run, size_t index) {
  return k.scores_dtype == SD_DTYPE_FLOAT16 ? half_to_double(run.scores16[index]) : double(run.scores32[index]);
}

std::vector<int32_t> widen(const std::vector<uint8_t>& bytes, const std::vector<int32_t>& ints, int32_t dtype) {
  return dtype == SD_LABELS_UINT8 ? std::vector<int32_t>(bytes.begin(), bytes.end()) : ints;
}

Run run_case(const Case& k) {
  Run run;
  std::mt19937 rng(k.seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_int_distribution<int> eighths(-24, 24);
  const size_t count = size_t(k.batch) * k.classes * k.in_height * k.in_width;
  run.scores32.resize(count);
  for (float& value : run.scores32) value = k.exact ? float(eighths(rng)) / 8.0f : normal(rng);
  if (k.scores_dtype == SD_DTYPE_FLOAT16) {
    run.scores16.resize(count);
    for (size_t i = 0; i < count; ++i) run.scores16[i] = float_to_half(run.scores32[i]);
  }
  const void* host_scores = k.scores_dtype == SD_DTYPE_FLOAT16 ? static_cast<const void*>(run.scores16.data())
                                                               : static_cast<const void*>(run.scores32.data());
  const size_t score_bytes = count * (k.scores_dtype == SD_DTYPE_FLOAT16 ? 2 : 4);
  const size_t pixels = size_t(k.batch) * k.out_height * k.out_width;
  const size_t label_size = k.labels_dtype == SD_LABELS_UINT8 ? 1 : 4;

  std::vector<uint8_t> cpu8(pixels), cuda8(pixels);
  std::vector<int32_t> cpu32(pixels), cuda32(pixels);
  sd_upsample_argmax_io io =
      io_of(k, host_scores, k.labels_dtype == SD_LABELS_UINT8 ? static_cast<void*>(cpu8.data()) : cpu32.data());
  run.cpu_status = sd_upsample_argmax_cpu(&io, 2);

  DeviceBuffer scores(score_bytes), labels(pixels * label_size);
  if (sd_cuda_memcpy(scores.pointer, host_scores, score_bytes) != SD_OK) std::abort();
  io.scores = scores.pointer;
  io.labels = labels.pointer;
  run.cuda_status = sd_upsample_argmax_cuda(&io, nullptr);
#ifdef SD_TEST_EMULATED_CUDA
  // Emulated device memory is host memory, filled with ones bits at allocation, and the emulated
  // streams run their work only when something waits: untouched labels show the call returned
  // without waiting for its kernel.
  const auto* untouched = static_cast<const uint8_t*>(labels.pointer);
  run.enqueued_without_waiting =
      std::all_of(untouched, untouched + pixels * label_size, [](uint8_t b) { return b == 0xff; });
#else
  run.enqueued_without_waiting = true;  // a GPU may finish first: only emulation can tell
#endif
  if (sd_cuda_stream_synchronize(nullptr) != SD_OK) std::abort();
  void* host_labels = k.labels_dtype == SD_LABELS_UINT8 ? static_cast<void*>(cuda8.data()) : cuda32.data();
  if (sd_cuda_memcpy(host_labels, labels.pointer, pixels * label_size) != SD_OK) std::abort();
  run.cpu = widen(cpu8, cpu32, k.labels_dtype);
  run.cuda = widen(cuda8, cuda32, k.labels_dtype);
  return run;
}

// Float64 interpolation of class c at output pixel (n, y, x), with the drivers' taps.
double reference(const Case& k, const Run& run, int32_t n, int32_t c, int32_t y, int32_t x) {
  const sd_upsample_argmax_io io = io_of(k, nullptr, nullptr);
  const segdeploy::head::LinearTap row = segdeploy::head::row_tap(io, y), column = segdeploy::head::column_tap(io, x);
  const size_t plane = (size_t(n) * k.classes + c) * k.in_height * k.in_width;
  const auto at = [&](int32_t r, int32_t s) { return score_at(k, run, plane + size_t(r) * k.in_width + s); };
  const auto along_x = [&](int32_t r) {
    return double(column.first_weight) * at(r, column.first) + double(column.second_weight) * at(r, column.second);
  };
  return double(row.first_weight) * along_x(row.first) + double(row.second_weight) * along_x(row.second);
}

void check_case(const Case& k) {
  const Run run = run_case(k);
  EXPECT(run.cpu_status == SD_OK && run.cuda_status == SD_OK, "%s: status cpu %d cuda %d (%s)", k.name.c_str(),
         run.cpu_status, run.cuda_status, sd_last_error());
  if (run.cpu_status != SD_OK || run.cuda_status != SD_OK) return;
  EXPECT(run.enqueued_without_waiting, "%s: sd_upsample_argmax_cuda waited for its kernel", k.name.c_str());
  int64_t ties = 0, bad = 0;
  for (int32_t n = 0; n < k.batch; ++n)
    for (int32_t y = 0; y < k.out_height; ++y)
      for (int32_t x = 0; x < k.out_width; ++x) {
        const size_t i = (size_t(n) * k.out_height + y) * k.out_width + x;
        const int32_t a = run.cuda[i], b = run.cpu[i];
        if (a == b) continue;
        if (a < 0 || a >= k.classes) {
          ++bad;
          continue;
        }
        double best = -INFINITY;
        for (int32_t c = 0; c < k.classes; ++c) best = std::max(best, reference(k, run, n, c, y, x));
        const double va = reference(k, run, n, a, y, x), vb = reference(k, run, n, b, y, x);
        const double tolerance = kTieTolerance * (1.0 + std::fabs(best));
        if (!k.exact && std::fabs(va - vb) <= tolerance && best - va <= tolerance) {
          ++ties;
        } else {
          if (bad < 5)
            std::fprintf(stderr, "%s: (%d, %d, %d): cuda %d (%.9g) cpu %d (%.9g), max %.9g\n", k.name.c_str(), n, y, x,
                         a, va, b, vb, best);
          ++bad;
        }
      }
  EXPECT(bad == 0, "%s: %lld labels differ from the CPU's beyond a near-exact tie", k.name.c_str(), (long long)bad);
  std::printf("%-40s %8zu pixels, %lld near-exact ties with the CPU\n", k.name.c_str(), run.cuda.size(),
              (long long)ties);
}

void test_cuda_matches_cpu() {
  const char* modes[] = {"half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"};
  // The emulated device holds 8 blocks at once, so these sizes run with 4, 2 and 1 rows per
  // thread, and 32 to 256 columns per block.
  for (int32_t mode = SD_RESIZE_HALF_PIXEL; mode <= SD_RESIZE_ASYMMETRIC; ++mode) {
    Case k;
    k.coordinates = mode;
    k.name = std::string(modes[mode]) + " x4 21 classes";
    k.in_height = 32, k.in_width = 40, k.out_height = 128, k.out_width = 160;
    check_case(k);
    k.name = std::string(modes[mode]) + " odd sizes x2.x";
    k.batch = 2, k.classes = 5, k.in_height = 7, k.in_width = 9, k.out_height = 19, k.out_width = 33;
    k.seed = 2;
    check_case(k);
    k.name = std::string(modes[mode]) + " given scale 1.7 (float16)";
    k.batch = 1, k.classes = 21, k.in_height = 11, k.in_width = 13, k.out_height = 18, k.out_width = 22;
    k.scale_height = 1.7f, k.scale_width = 1.7f, k.scores_dtype = SD_DTYPE_FLOAT16, k.seed = 3;
    check_case(k);
    k.name = std::string(modes[mode]) + " downsampling, one output row";
    k.scale_height = k.scale_width = 0.0f, k.scores_dtype = SD_DTYPE_FLOAT32;
    k.in_height = 9, k.in_width = 30, k.out_height = 1, k.out_width = 17, k.seed = 4;
    check_case(k);
  }
  Case k;
  k.name = "x8 19 classes float16 batch 3";
  k.batch = 3, k.classes = 19, k.in_height = 16, k.in_width = 32, k.out_height = 128, k.out_width = 256;
  k.scores_dtype = SD_DTYPE_FLOAT16, k.seed = 5;
  check_case(k);
  k = Case{};
  k.name = "x2 int32 labels (2 rows a thread)";
  k.in_height = 24, k.in_width = 128, k.out_height = 48, k.out_width = 256;
  k.labels_dtype = SD_LABELS_INT32, k.seed = 6;
  check_case(k);
  k = Case{};
  k.name = "300 classes int32 labels x4";
  k.classes = 300, k.in_height = 10, k.in_width = 12, k.out_height = 40, k.out_width = 48;
  k.labels_dtype = SD_LABELS_INT32, k.seed = 7;
  check_case(k);
  k = Case{};
  k.name = "256 classes uint8 labels";
  k.classes = 256, k.in_height = 6, k.in_width = 5, k.out_height = 24, k.out_width = 20, k.seed = 8;
  check_case(k);
  for (int32_t dtype : {SD_DTYPE_FLOAT32, SD_DTYPE_FLOAT16}) {
    k = Case{};
    k.name = dtype == SD_DTYPE_FLOAT16 ? "exact scores, ties (float16)" : "exact scores, ties (float32)";
    k.exact = true, k.classes = 6, k.in_height = 9, k.in_width = 11, k.out_height = 36, k.out_width = 44;
    k.scores_dtype = dtype, k.seed = 9;
    check_case(k);
  }
}

// NaN never wins, a pixel whose values are all NaN gets 0, and the first maximum wins.
void test_nan_and_ties() {
  const int32_t classes = 3, height = 2, width = 2;
  std::vector<float> scores(size_t(classes) * height * width, 1.0f);  // every class ties: label 0
  for (int32_t i = 0; i < height * width; ++i) scores[size_t(2) * height * width + i] = 2.0f;  // class 2 wins
  scores[size_t(2) * height * width + 0] = NAN;  // ... except where its interpolation reads a NaN
  DeviceBuffer device(scores.size() * sizeof(float)), labels(size_t(4) * 4 * 4);
  if (sd_cuda_memcpy(device.pointer, scores.data(), scores.size() * sizeof(float)) != SD_OK) std::abort();
  sd_upsample_argmax_io io{device.pointer, SD_DTYPE_FLOAT32, 1, classes, height, width, 4, 4,
                           SD_RESIZE_ALIGN_CORNERS, 0.0f, 0.0f, labels.pointer, SD_LABELS_INT32};
  EXPECT(sd_upsample_argmax_cuda(&io, nullptr) == SD_OK, "%s", sd_last_error());
  std::vector<int32_t> out(16);
  if (sd_cuda_memcpy(out.data(), labels.pointer, out.size() * 4) != SD_OK) std::abort();
  // align_corners 2 -> 4: output rows and columns 0-2 read source row and column 0 (row and column
  // 3 read source 1 only), so class 2 is NaN at (y, x < 3), even where the NaN's weight is 0.
  for (int32_t y = 0; y < 4; ++y)
    for (int32_t x = 0; x < 4; ++x) {
      const int32_t expected = y == 3 || x == 3 ? 2 : 0;
      EXPECT(out[size_t(y) * 4 + x] == expected, "NaN: label (%d, %d) = %d, expected %d", y, x, out[size_t(y) * 4 + x],
             expected);
    }
  std::fill(scores.begin(), scores.end(), NAN);
  if (sd_cuda_memcpy(device.pointer, scores.data(), scores.size() * sizeof(float)) != SD_OK) std::abort();
  EXPECT(sd_upsample_argmax_cuda(&io, nullptr) == SD_OK, "%s", sd_last_error());
  if (sd_cuda_memcpy(out.data(), labels.pointer, out.size() * 4) != SD_OK) std::abort();
  EXPECT(std::all_of(out.begin(), out.end(), [](int32_t v) { return v == 0; }), "all-NaN pixels must get label 0");
}

void test_rejects_bad_input() {
  DeviceBuffer device(1024), labels(1024);
  sd_upsample_argmax_io io{device.pointer, SD_DTYPE_FLOAT32, 1, 300, 1, 1, 2, 2,
                           SD_RESIZE_HALF_PIXEL, 0.0f, 0.0f, labels.pointer, SD_LABELS_UINT8};
  EXPECT(sd_upsample_argmax_cuda(&io, nullptr) == SD_ERROR_INVALID_ARGUMENT, "300 classes as uint8");
  EXPECT(std::strstr(sd_last_error(), "uint8") != nullptr, "message: %s", sd_last_error());
  io.classes = 3;
  io.coordinates = 7;
  EXPECT(sd_upsample_argmax_cuda(&io, nullptr) == SD_ERROR_INVALID_ARGUMENT, "coordinates 7");
  io.coordinates = SD_RESIZE_HALF_PIXEL;
  io.scores = nullptr;
  EXPECT(sd_upsample_argmax_cuda(&io, nullptr) == SD_ERROR_INVALID_ARGUMENT, "NULL scores");
  EXPECT(sd_upsample_argmax_cuda(nullptr, nullptr) == SD_ERROR_INVALID_ARGUMENT, "NULL io");
}

}  // namespace

int main() {
  if (sd_cuda_device_count() == 0) {
    std::printf("no CUDA device: the CUDA upsample + argmax tests are skipped\n");
    return 0;
  }
  test_cuda_matches_cpu();
  test_nan_and_ties();
  test_rejects_bad_input();
  return finish("CUDA upsample + argmax");
}
