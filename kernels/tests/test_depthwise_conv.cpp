// Tests of the depthwise convolution and the separable block through their C ABI only, against a
// float64 reference, over a grid of the shapes the zoo's models use (kernels 3 and 5, strides 1 and
// 2, dilations 1 to 18, symmetric and asymmetric pads) and the odd ones (1x1 images, odd sizes,
// channel counts that are not a multiple of the vector width, every kernel size 1..7, stride 3),
// float32 and float16, every activation; 1, 2 and 3 threads must give the same bits. Run by CTest,
// also under AddressSanitizer and UndefinedBehaviorSanitizer (SEGDEPLOY_SANITIZE), and once more
// with the portable CPU build (SEGDEPLOY_CPU_PORTABLE=1).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "segdeploy/depthwise_conv.h"
#include "test_support.h"

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Totals over every comparison, printed at the end.
struct Tally {
  int64_t depthwise_cases = 0, separable_cases = 0, values = 0;
  double worst = 0.0;  // largest error / tolerance seen
} tally;

struct Activation {
  const char* name;
  sd_activation value;
};
const Activation kActivations[] = {
    {"none", {SD_ACTIVATION_NONE, 0.0f, 0.0f}},
    {"relu", {SD_ACTIVATION_CLIP, 0.0f, kInf}},
    {"relu6", {SD_ACTIVATION_CLIP, 0.0f, 6.0f}},
    {"hardswish", {SD_ACTIVATION_HARDSWISH, 0.0f, 0.0f}},
};

double activate(double x, const sd_activation& a) {
  switch (a.kind) {
    case SD_ACTIVATION_CLIP:
      return std::min(std::max(x, double(a.lower)), double(a.upper));
    case SD_ACTIVATION_HARDSWISH:
      return x * std::min(std::max(x + 3.0, 0.0), 6.0) / 6.0;
    default:
      return x;
  }
}

// Values of one tensor: as float (float16-rounded when half) and as float16 bits when half.
struct Tensor {
  std::vector<float> values;
  std::vector<uint16_t> halves;
  void fill(size_t count, float scale, bool half, std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, scale);
    values.resize(count);
    for (float& v : values) v = normal(rng);
    if (half) {
      halves.resize(count);
      for (size_t i = 0; i < count; ++i) {
        halves[i] = float_to_half(values[i]);
        values[i] = float(half_to_double(halves[i]));
      }
    }
  }
  const void* data(bool half) const {
    if (values.empty()) return nullptr;
    return half ? static_cast<const void*>(halves.data()) : static_cast<const void*>(values.data());
  }
};

// One depthwise problem; an aggregate with the defaults below.
struct Problem {
  int32_t batch = 1, channels = 3, height = 9, width = 11;
  int32_t kernel_h = 3, kernel_w = 3, stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1;
  int32_t pad_top = 1, pad_left = 1, pad_bottom = 1, pad_right = 1;
  bool half = false, bias = true;
  int activation = 0;  // index into kActivations

  std::string describe() const {
    char text[320];
    std::snprintf(text, sizeof text,
                  "batch %d, %d channels, %dx%d, kernel %dx%d, stride %d/%d, dilation %d/%d, pads %d %d %d %d, "
                  "%s%s, %s",
                  batch, channels, height, width, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w,
                  pad_top, pad_left, pad_bottom, pad_right, half ? "float16" : "float32", bias ? "" : ", no bias",
                  kActivations[activation].name);
    return text;
  }
  int32_t out_h() const { return (height + pad_top + pad_bottom - dilation_h * (kernel_h - 1) - 1) / stride_h + 1; }
  int32_t out_w() const { return (width + pad_left + pad_right - dilation_w * (kernel_w - 1) - 1) / stride_w + 1; }
  bool valid() const {
    return height + pad_top + pad_bottom >= dilation_h * (kernel_h - 1) + 1 &&
           width + pad_left + pad_right >= dilation_w * (kernel_w - 1) + 1;
  }
};

struct Data {
  Tensor input, weight, bias;
};

Data make_data(const Problem& p, uint32_t seed) {
  std::mt19937 rng(seed);
  Data d;
  d.input.fill(size_t(p.batch) * p.channels * p.height * p.width, 1.0f, p.half, rng);
  d.weight.fill(size_t(p.channels) * p.kernel_h * p.kernel_w, 0.5f, p.half, rng);
  if (p.bias) d.bias.fill(size_t(p.channels), 0.5f, p.half, rng);
  return d;
}

sd_depthwise_conv_io make_io(const Problem& p, const Data& d, void* output) {
  sd_depthwise_conv_io io{};
  io.input = d.input.data(p.half);
  io.dtype = p.half ? SD_DTYPE_FLOAT16 : SD_DTYPE_FLOAT32;
  io.batch = p.batch;
  io.channels = p.channels;
  io.in_height = p.height;
  io.in_width = p.width;
  io.kernel_height = p.kernel_h;
  io.kernel_width = p.kernel_w;
  io.stride_height = p.stride_h;
  io.stride_width = p.stride_w;
  io.dilation_height = p.dilation_h;
  io.dilation_width = p.dilation_w;
  io.pad_top = p.pad_top;
  io.pad_left = p.pad_left;
  io.pad_bottom = p.pad_bottom;
  io.pad_right = p.pad_right;
  io.weight = d.weight.data(p.half);
  io.bias = d.bias.data(p.half);
  io.activation = kActivations[p.activation].value;
  io.output = output;
  io.out_height = p.out_h();
  io.out_width = p.out_w();
  return io;
}

// The float64 depthwise sum (before bias and activation) of output (n, c, y, x), and the sum of
// the magnitudes of its terms (the scale of float32's rounding error).
struct Sum {
  double value = 0.0, magnitude = 0.0;
};
Sum reference_sum(const Problem& p, const Data& d, int32_t n, int32_t c, int32_t y, int32_t x) {
  Sum s;
  for (int32_t ky = 0; ky < p.kernel_h; ++ky) {
    const int32_t iy = y * p.stride_h - p.pad_top + ky * p.dilation_h;
    if (iy < 0 || iy >= p.height) continue;
    for (int32_t kx = 0; kx < p.kernel_w; ++kx) {
      const int32_t ix = x * p.stride_w - p.pad_left + kx * p.dilation_w;
      if (ix < 0 || ix >= p.width) continue;
      const double term = double(d.input.values[((size_t(n) * p.channels + c) * p.height + iy) * p.width + ix]) *
                          double(d.weight.values[(size_t(c) * p.kernel_h + ky) * p.kernel_w + kx]);
      s.value += term;
      s.magnitude += std::fabs(term);
    }
  }
  if (p.bias) {
    s.value += d.bias.values[size_t(c)];
    s.magnitude += std::fabs(d.bias.values[size_t(c)]);
  }
  return s;
}

// The outputs of one call, as float (float16 converted), and the call's status.
struct Output {
  int status = -1;
  std::vector<float> values;
  std::vector<uint8_t> bytes;  // the raw output, for bitwise comparisons across thread counts
};

Output collect(int status, const std::vector<uint8_t>& bytes, bool half) {
  Output out;
  out.status = status;
  out.bytes = bytes;
  const size_t count = bytes.size() / (half ? 2 : 4);
  out.values.resize(count);
  for (size_t i = 0; i < count; ++i) {
    if (half) {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      out.values[i] = float(half_to_double(h));
    } else {
      std::memcpy(&out.values[i], bytes.data() + 4 * i, 4);
    }
  }
  return out;
}

Output run_depthwise(const Problem& p, const Data& d, int threads) {
  std::vector<uint8_t> bytes(size_t(p.batch) * p.channels * p.out_h() * p.out_w() * (p.half ? 2 : 4), 0xcd);
  const sd_depthwise_conv_io io = make_io(p, d, bytes.data());
  const int status = sd_depthwise_conv_cpu(&io, threads);
  return collect(status, bytes, p.half);
}

// |error| <= tolerance: float32 accumulation error on the terms' magnitude, plus float16's
// rounding of the result (half); the activations change values by at most 1.5x their slope.
double tolerance(double magnitude, double reference, bool half) {
  return 1.5 * (2e-6 * magnitude + 1e-30) + (half ? std::ldexp(std::fabs(reference), -11) + 6e-8 : 0.0);
}

void expect_close(double got, double want, double tol, const std::string& what, int64_t index, int* reported) {
  ++tally.values;
  const double error = std::fabs(got - want);
  if (tol > 0) tally.worst = std::max(tally.worst, error / tol);
  if (!(error <= tol)) {
    if ((*reported)++ < 3)
      EXPECT(error <= tol, "%s: value %lld is %.9g, reference %.9g (error %.3g > tolerance %.3g)", what.c_str(),
             static_cast<long long>(index), got, want, error, tol);
    else
      ++failures;
  }
}

void check_depthwise(const Problem& p, uint32_t seed) {
  ++tally.depthwise_cases;
  const Data d = make_data(p, seed);
  const Output out = run_depthwise(p, d, 1);
  EXPECT(out.status == SD_OK, "%s: status %d: %s", p.describe().c_str(), out.status, sd_last_error());
  if (out.status != SD_OK) return;
  int reported = 0;
  const sd_activation activation = kActivations[p.activation].value;
  int64_t index = 0;
  for (int32_t n = 0; n < p.batch; ++n)
    for (int32_t c = 0; c < p.channels; ++c)
      for (int32_t y = 0; y < p.out_h(); ++y)
        for (int32_t x = 0; x < p.out_w(); ++x, ++index) {
          const Sum s = reference_sum(p, d, n, c, y, x);
          const double want = activate(s.value, activation);
          expect_close(out.values[size_t(index)], want, tolerance(s.magnitude, want, p.half), p.describe(), index,
                        &reported);
        }
  // The thread count must not change a bit.
  for (int threads : {2, 3}) {
    const Output other = run_depthwise(p, d, threads);
    EXPECT(other.status == SD_OK && other.bytes == out.bytes, "%s: %d threads differ from 1 thread",
           p.describe().c_str(), threads);
  }
}

// The separable block: the depthwise problem, then out_channels pointwise filters.
struct Separable {
  Problem depthwise;
  int32_t out_channels = 5;
  bool pointwise_bias = true;
  int pointwise_activation = 0;
};

void check_separable(const Separable& s, uint32_t seed) {
  ++tally.separable_cases;
  const Problem& p = s.depthwise;
  const Data d = make_data(p, seed);
  std::mt19937 rng(seed + 1);
  Tensor pw, pb;
  pw.fill(size_t(s.out_channels) * p.channels, 1.0f / std::sqrt(float(p.channels)), p.half, rng);
  if (s.pointwise_bias) pb.fill(size_t(s.out_channels), 0.5f, p.half, rng);
  const int32_t oh = p.out_h(), ow = p.out_w();
  const size_t element = p.half ? 2 : 4;
  std::string what = p.describe() + ", pointwise to " + std::to_string(s.out_channels) + " channels, " +
                     kActivations[s.pointwise_activation].name + (s.pointwise_bias ? "" : ", no pointwise bias");
  const auto run = [&](int threads) {
    std::vector<uint8_t> bytes(size_t(p.batch) * s.out_channels * oh * ow * element, 0xcd);
    sd_separable_conv_io io{};
    io.depthwise = make_io(p, d, nullptr);
    io.out_channels = s.out_channels;
    io.pointwise_weight = pw.data(p.half);
    io.pointwise_bias = pb.data(p.half);
    io.pointwise_activation = kActivations[s.pointwise_activation].value;
    io.output = bytes.data();
    return collect(sd_separable_conv_cpu(&io, threads), bytes, p.half);
  };
  const Output out = run(1);
  EXPECT(out.status == SD_OK, "%s: status %d: %s", what.c_str(), out.status, sd_last_error());
  if (out.status != SD_OK) return;
  const sd_activation dw_activation = kActivations[p.activation].value;
  const sd_activation pw_activation = kActivations[s.pointwise_activation].value;
  int reported = 0;
  std::vector<double> dw(size_t(p.channels)), dw_error(size_t(p.channels));
  for (int32_t n = 0; n < p.batch; ++n)
    for (int32_t y = 0; y < oh; ++y)
      for (int32_t x = 0; x < ow; ++x) {
        for (int32_t c = 0; c < p.channels; ++c) {
          const Sum sum = reference_sum(p, d, n, c, y, x);
          dw[size_t(c)] = activate(sum.value, dw_activation);
          dw_error[size_t(c)] = std::fabs(dw[size_t(c)]) + 1.5 * sum.magnitude;
        }
        for (int32_t o = 0; o < s.out_channels; ++o) {
          double value = s.pointwise_bias ? pb.values[size_t(o)] : 0.0;
          double magnitude = std::fabs(value);
          for (int32_t c = 0; c < p.channels; ++c) {
            const double w = pw.values[size_t(o) * p.channels + c];
            value += w * dw[size_t(c)];
            magnitude += std::fabs(w) * dw_error[size_t(c)];
          }
          const double want = activate(value, pw_activation);
          const int64_t index = ((int64_t(n) * s.out_channels + o) * oh + y) * ow + x;
          expect_close(out.values[size_t(index)], want, tolerance(magnitude, want, p.half), what, index, &reported);
        }
      }
  for (int threads : {2, 3}) {
    const Output other = run(threads);
    EXPECT(other.status == SD_OK && other.bytes == out.bytes, "%s: %d threads differ from 1 thread", what.c_str(),
           threads);
  }
}

// The zoo's grid: kernels 3 and 5, strides 1 and 2, dilations 1..18, "same" pads and the
// asymmetric ones of TensorFlow-style "same" padding at stride 2, on small odd maps, 1x1 maps and
// maps smaller than the dilation; channel counts around the vector width; both dtypes; every
// activation.
void test_zoo_grid() {
  const int32_t sizes[][2] = {{1, 1}, {13, 11}, {33, 33}, {7, 20}, {2, 3}};
  const int32_t channel_counts[] = {1, 7, 9, 17};
  uint32_t seed = 1;
  int variant = 0;
  for (int32_t kernel : {3, 5})
    for (int32_t stride : {1, 2})
      for (int32_t dilation : {1, 2, 4, 6, 12, 18})
        for (int pad_mode = 0; pad_mode < 2; ++pad_mode)
          for (const auto& size : sizes) {
            Problem p;
            p.height = size[0];
            p.width = size[1];
            p.kernel_h = p.kernel_w = kernel;
            p.stride_h = p.stride_w = stride;
            p.dilation_h = p.dilation_w = dilation;
            const int32_t reach = dilation * (kernel - 1);
            if (pad_mode == 0) {  // symmetric "same"
              p.pad_top = p.pad_left = p.pad_bottom = p.pad_right = reach / 2;
            } else {  // asymmetric: less before than after (TensorFlow's "same" at stride 2), and uneven axes
              p.pad_top = reach / 2 - 1 > 0 ? reach / 2 - 1 : 0;
              p.pad_bottom = reach - p.pad_top;
              p.pad_left = 0;
              p.pad_right = reach / 2 + 1;
            }
            p.channels = channel_counts[variant % 4];
            p.half = variant % 3 == 1;
            p.activation = variant % 4 == 3 ? 0 : (variant + 1) % 4;
            p.bias = variant % 5 != 2;
            p.batch = variant % 7 == 0 ? 2 : 1;
            ++variant;
            if (!p.valid()) {
              int32_t out = 0;
              EXPECT(sd_conv_output_size(p.height, kernel, stride, dilation, p.pad_top, p.pad_bottom, &out) !=
                             SD_OK ||
                         sd_conv_output_size(p.width, kernel, stride, dilation, p.pad_left, p.pad_right, &out) !=
                             SD_OK,
                     "%s has no output but sd_conv_output_size accepts it", p.describe().c_str());
              continue;
            }
            check_depthwise(p, seed++);
          }
}

// Every kernel size, rectangular kernels, stride 3, mixed strides and dilations per axis.
void test_other_shapes() {
  uint32_t seed = 1000;
  for (int32_t kh = 1; kh <= 7; ++kh)
    for (int32_t kw = 1; kw <= 7; ++kw) {
      Problem p;
      p.kernel_h = kh;
      p.kernel_w = kw;
      p.height = 10 + kh;
      p.width = 9 + 2 * kw;
      p.pad_top = (kh - 1) / 2;
      p.pad_bottom = kh / 2;
      p.pad_left = kw / 2;
      p.pad_right = (kw - 1) / 2;
      p.channels = 1 + (kh * kw) % 10;
      p.stride_h = 1 + (kh + kw) % 3;
      p.stride_w = 1 + kw % 3;
      p.dilation_h = 1 + kw % 2;
      p.dilation_w = 1 + kh % 3;
      p.half = (kh + kw) % 2 == 0;
      p.activation = (kh + kw) % 4;
      p.pad_top = std::min(p.pad_top * p.dilation_h, 6);
      p.pad_left = std::min(p.pad_left * p.dilation_w, 6);
      if (!p.valid()) continue;
      check_depthwise(p, seed++);
    }
  // Pads wider than the kernel's reach: border outputs see only zeros (bias, activated).
  Problem wide;
  wide.pad_top = 4;
  wide.pad_left = 5;
  wide.pad_bottom = 3;
  wide.pad_right = 6;
  wide.activation = 3;
  check_depthwise(wide, seed++);
  // ReLU with a finite lower bound and an infinite upper one, and clip with negative bounds.
  Problem clip;
  clip.activation = 1;
  check_depthwise(clip, seed++);
}

// Shapes large enough to be split into several bands of rows (and wide rows whose staging holds
// few of them), as the MobileNet and Xception layers at 512x512 are.
void test_bands() {
  uint32_t seed = 2000;
  Problem tall;
  tall.channels = 2;
  tall.height = 181;
  tall.width = 203;
  check_depthwise(tall, seed++);
  Problem wide;
  wide.channels = 1;
  wide.height = 40;
  wide.width = 2501;
  wide.kernel_h = wide.kernel_w = 5;
  wide.dilation_h = wide.dilation_w = 6;
  wide.pad_top = wide.pad_left = wide.pad_bottom = wide.pad_right = 12;
  wide.half = true;
  check_depthwise(wide, seed++);
  Problem strided;
  strided.channels = 3;
  strided.height = 257;
  strided.width = 255;
  strided.stride_h = strided.stride_w = 2;
  strided.pad_top = strided.pad_left = 0;
  strided.activation = 2;
  check_depthwise(strided, seed++);
}

void test_separable() {
  uint32_t seed = 3000;
  const int32_t channel_counts[] = {1, 7, 9, 17, 40};
  const int32_t out_counts[] = {1, 5, 6, 7, 13};
  int variant = 0;
  for (int32_t kernel : {3, 5})
    for (int32_t stride : {1, 2})
      for (int32_t dilation : {1, 2, 6}) {
        Separable s;
        Problem& p = s.depthwise;
        p.kernel_h = p.kernel_w = kernel;
        p.stride_h = p.stride_w = stride;
        p.dilation_h = p.dilation_w = dilation;
        p.pad_top = p.pad_left = p.pad_bottom = p.pad_right = dilation * (kernel - 1) / 2;
        if (variant % 3 == 2) p.pad_bottom = p.pad_right = 0;
        p.height = variant % 4 == 0 ? 1 : 9 + 4 * variant;
        p.width = variant % 4 == 0 ? 1 : 31 - variant;
        p.channels = channel_counts[variant % 5];
        p.half = variant % 3 == 1;
        p.activation = variant % 4;
        p.bias = variant % 5 != 3;
        p.batch = variant % 6 == 5 ? 2 : 1;
        s.out_channels = out_counts[variant % 5];
        s.pointwise_activation = (variant + 2) % 4;
        s.pointwise_bias = variant % 4 != 1;
        ++variant;
        if (!p.valid()) continue;
        check_separable(s, seed++);
      }
}

// Every bad field returns SD_ERROR_INVALID_ARGUMENT with a message that names it.
void test_bad_inputs() {
  Problem p;
  const Data d = make_data(p, 7);
  std::vector<float> output(size_t(p.channels) * p.out_h() * p.out_w());
  const auto expect_rejected = [&](sd_depthwise_conv_io io, const char* named, int threads = 1) {
    const int validated = sd_depthwise_conv_validate(&io);
    const int status = sd_depthwise_conv_cpu(&io, threads);
    const std::string message = sd_last_error();
    EXPECT(status == SD_ERROR_INVALID_ARGUMENT, "%s: status %d", named, status);
    EXPECT(message.find(named) != std::string::npos, "the message names %s: \"%s\"", named, message.c_str());
    if (threads >= 0) EXPECT(validated == SD_ERROR_INVALID_ARGUMENT, "validate rejects %s", named);
  };
  const sd_depthwise_conv_io good = make_io(p, d, output.data());
  EXPECT(sd_depthwise_conv_validate(&good) == SD_OK, "%s", sd_last_error());
  EXPECT(sd_depthwise_conv_cpu(&good, 1) == SD_OK && std::string(sd_last_error()).empty(), "%s", sd_last_error());
  EXPECT(sd_depthwise_conv_cpu(nullptr, 1) == SD_ERROR_INVALID_ARGUMENT, "NULL io");
  EXPECT(sd_depthwise_conv_validate(nullptr) == SD_ERROR_INVALID_ARGUMENT, "NULL io");
  sd_depthwise_conv_io io = good;
  io.input = nullptr;
  expect_rejected(io, "input");
  io = good;
  io.weight = nullptr;
  expect_rejected(io, "weight");
  io = good;
  io.output = nullptr;
  expect_rejected(io, "output");
  io = good;
  io.dtype = 2;
  expect_rejected(io, "dtype");
  io = good;
  io.channels = 0;
  expect_rejected(io, "channels");
  io = good;
  io.batch = -1;
  expect_rejected(io, "batch");
  io = good;
  io.in_height = 0;
  expect_rejected(io, "in_height");
  io = good;
  io.kernel_width = 8;
  expect_rejected(io, "kernel_width");
  io = good;
  io.kernel_height = 0;
  expect_rejected(io, "kernel_height");
  io = good;
  io.stride_width = 0;
  expect_rejected(io, "stride_width");
  io = good;
  io.dilation_height = 0;
  expect_rejected(io, "dilation_height");
  io = good;
  io.pad_left = -1;
  expect_rejected(io, "pads");
  io = good;
  io.dilation_height = 9;  // spans 19 rows of a 9 + 2 padded input
  expect_rejected(io, "spans");
  io = good;
  io.out_width += 1;
  expect_rejected(io, "out_height x out_width");
  io = good;
  io.activation.kind = 3;
  expect_rejected(io, "activation.kind");
  io = good;
  io.activation = {SD_ACTIVATION_CLIP, 6.0f, 0.0f};
  expect_rejected(io, "lower <= upper");
  io = good;
  io.activation = {SD_ACTIVATION_CLIP, std::nanf(""), 1.0f};
  expect_rejected(io, "NaN");
  expect_rejected(good, "num_threads", -1);
  EXPECT(std::all_of(output.begin(), output.end(), [](float v) { return std::isfinite(v); }), "output written");

  int32_t out = 0;
  EXPECT(sd_conv_output_size(64, 3, 2, 1, 0, 1, &out) == SD_OK && out == 32, "TF same, stride 2: %d", out);
  EXPECT(sd_conv_output_size(32, 3, 1, 18, 18, 18, &out) == SD_OK && out == 32, "rate 18 same: %d", out);
  EXPECT(sd_conv_output_size(1, 3, 1, 12, 0, 0, &out) == SD_ERROR_INVALID_ARGUMENT, "no output");
  EXPECT(sd_conv_output_size(8, 3, 1, 1, 1, 1, nullptr) == SD_ERROR_INVALID_ARGUMENT, "NULL out");

  // The separable block's own fields.
  std::vector<float> pw(size_t(4) * p.channels, 0.25f), separable_out(size_t(4) * p.out_h() * p.out_w());
  sd_separable_conv_io sep{};
  sep.depthwise = make_io(p, d, nullptr);
  sep.out_channels = 4;
  sep.pointwise_weight = pw.data();
  sep.output = separable_out.data();
  EXPECT(sd_separable_conv_validate(&sep) == SD_OK, "%s", sd_last_error());
  EXPECT(sd_separable_conv_cpu(&sep, 2) == SD_OK, "%s", sd_last_error());
  const auto expect_separable_rejected = [&](sd_separable_conv_io bad, const char* named) {
    const int validated = sd_separable_conv_validate(&bad);
    const int status = sd_separable_conv_cpu(&bad, 1);
    const std::string message = sd_last_error();
    EXPECT(status == SD_ERROR_INVALID_ARGUMENT && validated == SD_ERROR_INVALID_ARGUMENT, "%s: status %d", named,
           status);
    EXPECT(message.find(named) != std::string::npos, "the message names %s: \"%s\"", named, message.c_str());
  };
  sd_separable_conv_io bad = sep;
  bad.depthwise.output = output.data();
  expect_separable_rejected(bad, "depthwise.output");
  bad = sep;
  bad.out_channels = 0;
  expect_separable_rejected(bad, "out_channels");
  bad = sep;
  bad.pointwise_weight = nullptr;
  expect_separable_rejected(bad, "pointwise_weight");
  bad = sep;
  bad.output = nullptr;
  expect_separable_rejected(bad, "output");
  bad = sep;
  bad.pointwise_activation.kind = -1;
  expect_separable_rejected(bad, "pointwise_activation");
  bad = sep;
  bad.depthwise.stride_height = 0;
  expect_separable_rejected(bad, "stride_height");
  EXPECT(sd_separable_conv_cpu(nullptr, 1) == SD_ERROR_INVALID_ARGUMENT, "NULL io");
}

}  // namespace

int main() {
  test_bad_inputs();
  test_zoo_grid();
  test_other_shapes();
  test_bands();
  test_separable();
  std::printf("%lld depthwise and %lld separable cases, %lld values; worst error %.3f of the tolerance\n",
              static_cast<long long>(tally.depthwise_cases), static_cast<long long>(tally.separable_cases),
              static_cast<long long>(tally.values), tally.worst);
  return finish("depthwise convolution");
}
