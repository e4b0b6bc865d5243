// Tests of the fused upsample + argmax through its C ABI only, against a float64 reference
// (ONNX Resize in linear mode, then ArgMax). Run by CTest, also under AddressSanitizer and
// UndefinedBehaviorSanitizer (SEGDEPLOY_SANITIZE), and once more with the portable CPU build
// (SEGDEPLOY_CPU_PORTABLE=1).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "segdeploy/kernels.h"
#include "segdeploy/upsample_argmax.h"
#include "test_support.h"

namespace {

const char* const kModes[] = {"half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"};

// Two classes whose reference values differ by less than this (relative, values below 1 counted
// as 1) are a tie: float32 rounding may order them either way.
constexpr double kTieTolerance = 1e-5;

// Totals over every comparison, printed at the end.
struct Tally {
  int64_t cases = 0, pixels = 0, disagreements = 0, beyond_ties = 0, ties = 0;
} tally;

// One problem: shapes, mode, scales and the scores (as float, and as float16 bits when asked). An
// aggregate: Problem{batch, classes, in_height, in_width, out_height, out_width, mode, ...}.
struct Problem {
  int32_t batch = 1, classes = 3, in_height = 4, in_width = 5, out_height = 8, out_width = 10;
  int32_t mode = SD_RESIZE_HALF_PIXEL;
  float scale_height = 0.0f, scale_width = 0.0f;
  bool half = false;
  std::vector<float> scores;     // the values the kernel sees (float16-rounded when half)
  std::vector<uint16_t> halves;  // float16 bits when half

  int64_t in_pixels() const { return int64_t(in_height) * in_width; }
  int64_t out_pixels() const { return int64_t(out_height) * out_width; }

  // Logit-like scores: a smooth random field per class plus noise, so that the interpolation
  // moves the argmax between classes inside the image.
  void fill(uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    scores.resize(size_t(batch) * classes * in_pixels());
    for (float& value : scores) value = 2.0f * normal(rng);
    if (half) {
      halves.resize(scores.size());
      for (size_t i = 0; i < scores.size(); ++i) {
        halves[i] = float_to_half(scores[i]);
        scores[i] = float(half_to_double(halves[i]));
      }
    }
  }

  std::string describe() const {
    char text[256];
    std::snprintf(text, sizeof text, "batch %d, %d classes, %dx%d -> %dx%d, %s, scales %g/%g%s", batch, classes,
                  in_height, in_width, out_height, out_width, kModes[mode], scale_height, scale_width,
                  half ? ", float16" : "");
    return text;
  }
};

// ONNX Resize's source coordinate along one axis in float64 (the ONNX formulas, clamped as ONNX
// Runtime's linear mode does), and the two taps and weights.
struct Taps {
  int64_t first, second;
  double first_weight, second_weight;
};

Taps reference_taps(int32_t index, int32_t in, int32_t out, float given_scale, int32_t mode) {
  const double scale = given_scale != 0.0f ? double(given_scale) : double(out) / double(in);
  const double x = index;
  double c;
  if (scale == 1.0) {
    c = x;
  } else if (mode == SD_RESIZE_ALIGN_CORNERS) {
    c = out == 1 ? 0.0 : x * (in - 1) / (out - 1);
  } else if (mode == SD_RESIZE_ASYMMETRIC) {
    c = x / scale;
  } else if (mode == SD_RESIZE_PYTORCH_HALF_PIXEL && out == 1) {
    c = 0.0;
  } else {
    c = (x + 0.5) / scale - 0.5;
  }
  c = std::clamp(c, 0.0, double(in - 1));
  Taps t;
  t.first = std::min<int64_t>(int64_t(c), in - 1);
  t.second = std::min<int64_t>(t.first + 1, in - 1);
  t.second_weight = c - double(t.first);
  t.first_weight = 1.0 - t.second_weight;
  return t;
}

// Resize then ArgMax in float64 for one output pixel: every class's value.
void reference_values(const Problem& p, int32_t n, int32_t y, int32_t x, std::vector<double>& values) {
  const Taps ty = reference_taps(y, p.in_height, p.out_height, p.scale_height, p.mode);
  const Taps tx = reference_taps(x, p.in_width, p.out_width, p.scale_width, p.mode);
  values.resize(size_t(p.classes));
  for (int32_t c = 0; c < p.classes; ++c) {
    const float* plane = p.scores.data() + (int64_t(n) * p.classes + c) * p.in_pixels();
    const auto at = [&](int64_t row, int64_t column) { return double(plane[row * p.in_width + column]); };
    values[size_t(c)] = ty.first_weight * (tx.first_weight * at(ty.first, tx.first) + tx.second_weight * at(ty.first, tx.second)) +
                        ty.second_weight * (tx.first_weight * at(ty.second, tx.first) + tx.second_weight * at(ty.second, tx.second));
  }
}

// The first maximum; NaN never wins (all NaN: 0).
int32_t reference_argmax(const std::vector<double>& values) {
  int32_t best = 0;
  double top = -std::numeric_limits<double>::infinity();
  for (size_t c = 0; c < values.size(); ++c)
    if (values[c] > top) {
      top = values[c];
      best = int32_t(c);
    }
  return best;
}

struct Output {
  int status = -1;
  std::string error;
  std::vector<int32_t> labels;
};

Output run(const Problem& p, int32_t labels_dtype, int threads) {
  const size_t count = size_t(p.batch) * p.out_pixels();
  std::vector<uint8_t> narrow(count, 0xee);
  std::vector<int32_t> wide(count, -7);
  const sd_upsample_argmax_io io{
      p.half ? static_cast<const void*>(p.halves.data()) : static_cast<const void*>(p.scores.data()),
      p.half ? SD_DTYPE_FLOAT16 : SD_DTYPE_FLOAT32,
      p.batch, p.classes, p.in_height, p.in_width, p.out_height, p.out_width, p.mode, p.scale_height, p.scale_width,
      labels_dtype == SD_LABELS_UINT8 ? static_cast<void*>(narrow.data()) : static_cast<void*>(wide.data()),
      labels_dtype};
  Output out;
  out.status = sd_upsample_argmax_cpu(&io, threads);
  out.error = sd_last_error();
  out.labels = wide;
  if (labels_dtype == SD_LABELS_UINT8) std::copy(narrow.begin(), narrow.end(), out.labels.begin());
  return out;
}

// Compares the kernel with the reference: a pixel may disagree only where the class the kernel
// chose is within the tie tolerance of the reference's maximum.
void expect_matches_reference(const Problem& p, int32_t labels_dtype, int threads = 0) {
  const Output out = run(p, labels_dtype, threads);
  EXPECT(out.status == SD_OK, "%s: status %d (%s)", p.describe().c_str(), out.status, out.error.c_str());
  if (out.status != SD_OK) return;
  std::vector<double> values;
  int64_t disagreements = 0, ties = 0, bad = 0;
  for (int32_t n = 0; n < p.batch; ++n)
    for (int32_t y = 0; y < p.out_height; ++y)
      for (int32_t x = 0; x < p.out_width; ++x) {
        reference_values(p, n, y, x, values);
        const int32_t expected = reference_argmax(values);
        const double top = values[size_t(expected)];
        double second = -std::numeric_limits<double>::infinity();
        for (size_t c = 0; c < values.size(); ++c)
          if (c != size_t(expected) && values[c] > second) second = values[c];
        const double tolerance = kTieTolerance * std::max({1.0, std::fabs(top)});
        if (top - second < tolerance) ++ties;
        const int32_t got = out.labels[size_t((int64_t(n) * p.out_height + y) * p.out_width + x)];
        if (got == expected) continue;
        ++disagreements;
        const bool tie = got >= 0 && got < p.classes && top - values[size_t(got)] < tolerance;
        if (!tie && bad++ < 3)
          EXPECT(false, "%s: pixel (%d, %d, %d): label %d, reference %d (values %.9g vs %.9g)", p.describe().c_str(),
                 n, y, x, got, expected, got >= 0 && got < p.classes ? values[size_t(got)] : NAN, top);
      }
  EXPECT(bad == 0, "%s: %lld pixels disagree beyond ties", p.describe().c_str(), (long long)bad);
  ++tally.cases;
  tally.pixels += int64_t(p.batch) * p.out_pixels();
  tally.disagreements += disagreements;
  tally.ties += ties;
  tally.beyond_ties += bad;
}

struct Shape {
  int32_t in_height, in_width, out_height, out_width;
  float scale_height, scale_width;
};

// Odd sizes, x2 / x4 / x8, non-integer factors (given as sizes or as scales), downsampling, an
// identity axis, output and input axes of length 1.
const Shape kShapes[] = {
    {7, 9, 14, 18, 0, 0},          {5, 11, 20, 44, 0, 0},      {3, 5, 24, 40, 0, 0},
    {33, 33, 100, 100, 0, 0},      {13, 17, 31, 29, 0, 0},     {20, 30, 7, 11, 0, 0},
    {10, 12, 25, 39, 2.5f, 3.3f},  {9, 6, 9, 6, 0, 0},         {6, 7, 1, 23, 0, 0},
    {1, 4, 5, 16, 0, 0},           {4, 4, 16, 16, 4.0f, 4.0f}, {8, 5, 8, 40, 1.0f, 8.0f},
};

void test_matches_reference_for_every_mode_and_shape() {
  uint32_t seed = 1;
  for (int32_t mode = 0; mode < 4; ++mode)
    for (const Shape& s : kShapes)
      for (int32_t classes : {1, 2, 21}) {
        Problem p{classes == 2 ? 2 : 1, classes, s.in_height, s.in_width, s.out_height, s.out_width, mode,
                  s.scale_height, s.scale_width};
        p.fill(seed++);
        expect_matches_reference(p, SD_LABELS_UINT8);
        expect_matches_reference(p, SD_LABELS_INT32);
      }
}

void test_many_classes_batches_and_float16() {
  uint32_t seed = 100;
  for (int32_t mode = 0; mode < 4; ++mode)
    for (int32_t classes : {19, 255, 256, 300}) {
      Problem p{2, classes, 6, 7, 48, 56, mode};  // x8
      p.fill(seed++);
      if (classes <= 256) expect_matches_reference(p, SD_LABELS_UINT8);
      expect_matches_reference(p, SD_LABELS_INT32);
      p.half = true;
      p.out_height = 24;
      p.out_width = 25;  // x4, and a non-integer width
      p.fill(seed++);
      expect_matches_reference(p, classes <= 256 ? SD_LABELS_UINT8 : SD_LABELS_INT32);
    }
  // DeepLabV3+'s head at a quarter of its usual area: x4 from 64x64 to 256x256, 21 classes, float16 too.
  Problem p{1, 21, 64, 64, 256, 256};
  p.fill(7);
  expect_matches_reference(p, SD_LABELS_UINT8);
  p.half = true;
  p.fill(8);
  expect_matches_reference(p, SD_LABELS_UINT8);
}

void test_thread_counts_give_identical_labels() {
  Problem p{2, 19, 33, 65, 263, 517};  // wider than one tile of columns
  p.fill(11);
  for (int32_t mode = 0; mode < 4; ++mode) {
    p.mode = mode;
    const Output one = run(p, SD_LABELS_INT32, 1);
    EXPECT(one.status == SD_OK, "%s", one.error.c_str());
    for (int threads : {2, 3, 0}) {
      const Output other = run(p, SD_LABELS_INT32, threads);
      EXPECT(other.status == SD_OK && other.labels == one.labels, "%s: %d threads differ from 1",
             p.describe().c_str(), threads);
    }
  }
  p.classes = 300;
  p.out_height = 23;
  p.fill(12);
  const Output one = run(p, SD_LABELS_INT32, 1);
  for (int threads : {2, 3}) EXPECT(run(p, SD_LABELS_INT32, threads).labels == one.labels, "300 classes, %d threads", threads);
  expect_matches_reference(p, SD_LABELS_INT32, 3);
}

// Exact ties go to the first class, NaN never wins, a pixel of NaN only (or -inf only) gets 0.
void test_ties_and_non_finite_values() {
  Problem p{1, 4, 2, 3, 4, 6};
  // Every output pixel of p must get `label`.
  const auto expect_every_label = [&p](int32_t labels_dtype, int threads, int32_t label, const char* what) {
    EXPECT(run(p, labels_dtype, threads).labels == std::vector<int32_t>(size_t(p.out_pixels()), label), "%s", what);
  };
  // Class `k`'s scores, all `value`.
  const auto set_class = [&p](int32_t k, float value) {
    std::fill_n(p.scores.begin() + k * p.in_pixels(), p.in_pixels(), value);
  };
  p.scores.assign(size_t(p.classes) * p.in_pixels(), 1.0f);
  expect_every_label(SD_LABELS_UINT8, 1, 0, "equal classes: label 0");
  set_class(1, 3.0f);
  set_class(3, 3.0f);
  expect_every_label(SD_LABELS_UINT8, 1, 1, "tie of 1 and 3: label 1");
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  set_class(0, nan);
  set_class(1, nan);
  expect_every_label(SD_LABELS_INT32, 1, 3, "NaN never wins");
  std::fill(p.scores.begin(), p.scores.end(), nan);
  expect_every_label(SD_LABELS_INT32, 2, 0, "all NaN: label 0");
  std::fill(p.scores.begin(), p.scores.end(), -inf);
  expect_every_label(SD_LABELS_INT32, 2, 0, "all -inf: label 0");
}

void test_rejects_bad_input() {
  std::vector<float> scores(2 * 3 * 4 * 5, 0.0f);
  std::vector<int32_t> labels(2 * 8 * 10);
  const sd_upsample_argmax_io good{scores.data(), SD_DTYPE_FLOAT32, 2, 3, 4, 5, 8, 10, SD_RESIZE_HALF_PIXEL,
                                   0.0f, 0.0f, labels.data(), SD_LABELS_INT32};
  EXPECT(sd_upsample_argmax_validate(&good) == SD_OK, "%s", sd_last_error());
  EXPECT(sd_upsample_argmax_cpu(&good, 1) == SD_OK, "%s", sd_last_error());
  EXPECT(std::string(sd_last_error()).empty(), "no message after success");

  struct Case {
    const char* what;
    void (*adjust)(sd_upsample_argmax_io&);
    const char* message;  // part of the expected message
  };
  const Case cases[] = {
      {"NULL scores", [](sd_upsample_argmax_io& io) { io.scores = nullptr; }, "scores"},
      {"NULL labels", [](sd_upsample_argmax_io& io) { io.labels = nullptr; }, "labels"},
      {"bad scores dtype", [](sd_upsample_argmax_io& io) { io.scores_dtype = 2; }, "scores_dtype"},
      {"negative scores dtype", [](sd_upsample_argmax_io& io) { io.scores_dtype = -1; }, "scores_dtype"},
      {"bad labels dtype", [](sd_upsample_argmax_io& io) { io.labels_dtype = 2; }, "labels_dtype"},
      {"bad coordinates", [](sd_upsample_argmax_io& io) { io.coordinates = 4; }, "coordinates"},
      {"negative coordinates", [](sd_upsample_argmax_io& io) { io.coordinates = -1; }, "coordinates"},
      {"zero batch", [](sd_upsample_argmax_io& io) { io.batch = 0; }, "batch=0"},
      {"zero classes", [](sd_upsample_argmax_io& io) { io.classes = 0; }, "classes=0"},
      {"negative in_height", [](sd_upsample_argmax_io& io) { io.in_height = -4; }, "in_height=-4"},
      {"zero in_width", [](sd_upsample_argmax_io& io) { io.in_width = 0; }, "in_width=0"},
      {"zero out_height", [](sd_upsample_argmax_io& io) { io.out_height = 0; }, "out_height=0"},
      {"negative out_width", [](sd_upsample_argmax_io& io) { io.out_width = -1; }, "out_width=-1"},
      {"uint8 with 257 classes",
       [](sd_upsample_argmax_io& io) {
         io.classes = 257;
         io.labels_dtype = SD_LABELS_UINT8;
       },
       "257"},
      {"negative scale", [](sd_upsample_argmax_io& io) { io.scale_height = -2.0f; }, "scale_height"},
      {"NaN scale", [](sd_upsample_argmax_io& io) { io.scale_width = std::numeric_limits<float>::quiet_NaN(); },
       "scale_width"},
      {"infinite scale", [](sd_upsample_argmax_io& io) { io.scale_width = std::numeric_limits<float>::infinity(); },
       "scale_width"},
  };
  for (const Case& c : cases) {
    sd_upsample_argmax_io io = good;
    c.adjust(io);
    for (int call = 0; call < 2; ++call) {
      const int status = call == 0 ? sd_upsample_argmax_validate(&io) : sd_upsample_argmax_cpu(&io, 1);
      const std::string message = sd_last_error();
      EXPECT(status == SD_ERROR_INVALID_ARGUMENT, "%s: status %d", c.what, status);
      EXPECT(message.find(c.message) != std::string::npos, "%s: message '%s' lacks '%s'", c.what, message.c_str(),
             c.message);
    }
  }
  EXPECT(sd_upsample_argmax_validate(nullptr) == SD_ERROR_INVALID_ARGUMENT, "NULL io");
  EXPECT(sd_upsample_argmax_cpu(nullptr, 1) == SD_ERROR_INVALID_ARGUMENT, "NULL io");
  EXPECT(sd_upsample_argmax_cpu(&good, -1) == SD_ERROR_INVALID_ARGUMENT, "negative thread count");
  sd_upsample_argmax_io uint8_max = good;
  std::vector<float> many(size_t(256) * 4 * 5, 0.0f);
  std::vector<uint8_t> narrow(2 * 8 * 10);
  uint8_max.scores = many.data();
  uint8_max.batch = 1;
  uint8_max.classes = 256;
  uint8_max.labels = narrow.data();
  uint8_max.labels_dtype = SD_LABELS_UINT8;
  EXPECT(sd_upsample_argmax_cpu(&uint8_max, 1) == SD_OK, "uint8 with 256 classes: %s", sd_last_error());
  if (!sd_built_with_cuda()) {
    EXPECT(sd_upsample_argmax_cuda(&good, nullptr) == SD_ERROR_NOT_BUILT, "CUDA entry point without CUDA");
    EXPECT(std::string(sd_last_error()).find("without CUDA") != std::string::npos, "%s", sd_last_error());
  }
}

void run_all(const char* build) {
  tally = Tally{};
  test_rejects_bad_input();
  test_ties_and_non_finite_values();
  test_matches_reference_for_every_mode_and_shape();
  test_many_classes_batches_and_float16();
  test_thread_counts_give_identical_labels();
  std::printf("upsample_argmax (%s CPU build): %lld cases, %lld pixels, %lld disagree with the float64 reference "
              "(%lld of them beyond a tie), %lld near-ties (top two within %g)\n",
              build, (long long)tally.cases, (long long)tally.pixels, (long long)tally.disagreements,
              (long long)tally.beyond_ties, (long long)tally.ties, kTieTolerance);
}

}  // namespace

int main() {
  run_all("best");
  setenv("SEGDEPLOY_CPU_PORTABLE", "1", 1);
  run_all("portable");
  return finish("upsample_argmax");
}
