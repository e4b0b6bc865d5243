// The CUDA depthwise convolution (sd_depthwise_conv_cuda) against the CPU driver
// (sd_depthwise_conv_cpu) and a float64 reference, through the C ABI. Built twice: against
// segdeploy_kernels_emulated_cuda (SD_TEST_EMULATED_CUDA: the kernel runs on the host,
// tests/cuda_emulation.h), and against the real library, where it runs on a GPU (and skips without
// one).
//
// Both drivers sum the same float32 products, perhaps in another order and with or without FMA
// contraction, so float32 results agree to ~1e-6 of the sum of the products' magnitudes
// (kFloat32Tolerance of it is allowed); float16 results are those sums rounded to float16, which
// may round to neighbouring float16 values (one float16 ulp apart).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "segdeploy/cuda.h"
#include "segdeploy/depthwise_conv.h"
#include "test_support.h"

namespace {

constexpr double kFloat32Tolerance = 1e-5;  // of the sum of |products| (+ |bias|)

// The largest |cuda - cpu| / (sum of |products| + |bias|) seen so far, per dtype (printed).
double largest_difference[2] = {0.0, 0.0};

struct Case {
  int32_t dtype = SD_DTYPE_FLOAT32;
  int32_t batch = 1, channels = 7, in_height = 13, in_width = 11;
  int32_t kernel_height = 3, kernel_width = 3, stride_height = 1, stride_width = 1;
  int32_t dilation_height = 1, dilation_width = 1;
  int32_t pad_top = 1, pad_left = 1, pad_bottom = 1, pad_right = 1;
  bool bias = true;
  sd_activation activation{SD_ACTIVATION_NONE, 0.0f, 0.0f};
  bool misaligned = false;  // float16 input one element past a 4-byte boundary
  uint32_t seed = 1;

  std::string name() const {
    char text[256];
    std::snprintf(text, sizeof text, "%s n%d c%d %dx%d k%dx%d s%dx%d d%dx%d p%d,%d,%d,%d%s act%d%s",
                  dtype == SD_DTYPE_FLOAT16 ? "f16" : "f32", batch, channels, in_height, in_width, kernel_height,
                  kernel_width, stride_height, stride_width, dilation_height, dilation_width, pad_top, pad_left,
                  pad_bottom, pad_right, bias ? " bias" : "", activation.kind, misaligned ? " misaligned" : "");
    return text;
  }
};

// The case's values as the kernels see them (float16 ones rounded), in float32 and their bits.
struct Tensor {
  std::vector<float> values;
  std::vector<uint16_t> halves;
  const void* data(int32_t dtype) const {
    return dtype == SD_DTYPE_FLOAT16 ? static_cast<const void*>(halves.data()) : values.data();
  }
  size_t bytes(int32_t dtype) const { return values.size() * (dtype == SD_DTYPE_FLOAT16 ? 2 : 4); }
};

Tensor random_tensor(size_t count, float scale, int32_t dtype, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, scale);
  Tensor t;
  t.values.resize(count);
  for (float& v : t.values) v = normal(rng);
  if (dtype == SD_DTYPE_FLOAT16) {
    t.halves.resize(count);
    for (size_t i = 0; i < count; ++i) {
      t.halves[i] = float_to_half(t.values[i]);
      t.values[i] = float(half_to_double(t.halves[i]));
    }
  }
  return t;
}

double activate64(double x, const sd_activation& a) {
  switch (a.kind) {
    case SD_ACTIVATION_CLIP: return std::min(std::max(x, double(a.lower)), double(a.upper));
    case SD_ACTIVATION_HARDSWISH: return x * std::min(std::max(x + 3.0, 0.0), 6.0) / 6.0;
    default: return x;
  }
}

// Returns false (and counts a failure) when a driver fails.
bool check_case(const Case& k) {
  const std::string name = k.name();
  int32_t out_height = 0, out_width = 0;
  if (sd_conv_output_size(k.in_height, k.kernel_height, k.stride_height, k.dilation_height, k.pad_top, k.pad_bottom,
                          &out_height) != SD_OK ||
      sd_conv_output_size(k.in_width, k.kernel_width, k.stride_width, k.dilation_width, k.pad_left, k.pad_right,
                          &out_width) != SD_OK) {
    EXPECT(false, "%s: no output size (%s)", name.c_str(), sd_last_error());
    return false;
  }
  std::mt19937 rng(k.seed);
  const Tensor input = random_tensor(size_t(k.batch) * k.channels * k.in_height * k.in_width, 1.0f, k.dtype, rng);
  const Tensor weight = random_tensor(size_t(k.channels) * k.kernel_height * k.kernel_width, 0.5f, k.dtype, rng);
  const Tensor bias = random_tensor(size_t(k.channels), 0.5f, k.dtype, rng);
  const size_t outputs = size_t(k.batch) * k.channels * out_height * out_width;
  const size_t element = k.dtype == SD_DTYPE_FLOAT16 ? 2 : 4;

  sd_depthwise_conv_io io{};
  io.dtype = k.dtype;
  io.batch = k.batch, io.channels = k.channels, io.in_height = k.in_height, io.in_width = k.in_width;
  io.kernel_height = k.kernel_height, io.kernel_width = k.kernel_width;
  io.stride_height = k.stride_height, io.stride_width = k.stride_width;
  io.dilation_height = k.dilation_height, io.dilation_width = k.dilation_width;
  io.pad_top = k.pad_top, io.pad_left = k.pad_left, io.pad_bottom = k.pad_bottom, io.pad_right = k.pad_right;
  io.activation = k.activation;
  io.out_height = out_height, io.out_width = out_width;

  std::vector<uint8_t> cpu(outputs * element), cuda(outputs * element);
  io.input = input.data(k.dtype);
  io.weight = weight.data(k.dtype);
  io.bias = k.bias ? bias.data(k.dtype) : nullptr;
  io.output = cpu.data();
  const int cpu_status = sd_depthwise_conv_cpu(&io, 2);
  EXPECT(cpu_status == SD_OK, "%s: cpu: %s", name.c_str(), sd_last_error());

  const size_t offset = k.misaligned ? element : 0;
  DeviceBuffer device_input(input.bytes(k.dtype) + offset), device_weight(weight.bytes(k.dtype), weight.data(k.dtype));
  DeviceBuffer device_bias(bias.bytes(k.dtype), bias.data(k.dtype)), device_output(outputs * element);
  void* input_at = static_cast<uint8_t*>(device_input.pointer) + offset;
  EXPECT(sd_cuda_memcpy(input_at, input.data(k.dtype), input.bytes(k.dtype)) == SD_OK, "%s", sd_last_error());
  io.input = input_at;
  io.weight = device_weight.pointer;
  io.bias = k.bias ? device_bias.pointer : nullptr;
  io.output = device_output.pointer;
  const int cuda_status = sd_depthwise_conv_cuda(&io, nullptr);
  EXPECT(cuda_status == SD_OK, "%s: cuda: %s", name.c_str(), sd_last_error());
  if (cpu_status != SD_OK || cuda_status != SD_OK) return false;
#ifdef SD_TEST_EMULATED_CUDA
  // Emulated device memory is host memory, filled with ones bits at allocation, and the emulated
  // streams run their work only when something waits: an untouched output shows the call returned
  // without waiting for its kernel.
  const auto* untouched = static_cast<const uint8_t*>(device_output.pointer);
  EXPECT(std::all_of(untouched, untouched + outputs * element, [](uint8_t b) { return b == 0xff; }),
         "%s: sd_depthwise_conv_cuda waited for its kernel", name.c_str());
#endif
  EXPECT(sd_cuda_stream_synchronize(nullptr) == SD_OK, "%s", sd_last_error());
  EXPECT(sd_cuda_memcpy(cuda.data(), device_output.pointer, cuda.size()) == SD_OK, "%s", sd_last_error());

  const auto value = [&](const std::vector<uint8_t>& bytes, size_t i) {
    if (k.dtype == SD_DTYPE_FLOAT16) {
      uint16_t half;
      std::memcpy(&half, bytes.data() + 2 * i, 2);
      return half_to_double(half);
    }
    float f;
    std::memcpy(&f, bytes.data() + 4 * i, 4);
    return double(f);
  };
  int64_t bad = 0;
  for (int32_t n = 0; n < k.batch; ++n)
    for (int32_t c = 0; c < k.channels; ++c)
      for (int32_t y = 0; y < out_height; ++y)
        for (int32_t x = 0; x < out_width; ++x) {
          double sum = k.bias ? bias.values[c] : 0.0, magnitude = k.bias ? std::fabs(sum) : 0.0;
          for (int32_t i = 0; i < k.kernel_height; ++i)
            for (int32_t j = 0; j < k.kernel_width; ++j) {
              const int32_t r = y * k.stride_height - k.pad_top + i * k.dilation_height;
              const int32_t s = x * k.stride_width - k.pad_left + j * k.dilation_width;
              if (r < 0 || r >= k.in_height || s < 0 || s >= k.in_width) continue;
              const double product = double(weight.values[(size_t(c) * k.kernel_height + i) * k.kernel_width + j]) *
                                     input.values[((size_t(n) * k.channels + c) * k.in_height + r) * k.in_width + s];
              sum += product;
              magnitude += std::fabs(product);
            }
          const double expected = activate64(sum, k.activation);
          const size_t index = ((size_t(n) * k.channels + c) * out_height + y) * out_width + x;
          const double a = value(cuda, index), b = value(cpu, index);
          // hardswish's slope is at most 1.5; a float16 result may be one ulp (<= 2^-10 relative)
          // from the CPU's, and half an ulp from float64.
          const bool half = k.dtype == SD_DTYPE_FLOAT16;
          double tolerance = 1.5 * kFloat32Tolerance * magnitude;
          if (half) tolerance += std::ldexp(std::max(std::fabs(a), std::fabs(b)), -10) + 0x1p-24;
          const double rounding = half ? std::ldexp(std::fabs(expected), -11) : 0.0;
          const bool ok = std::fabs(a - b) <= tolerance && std::fabs(a - expected) <= tolerance + rounding;
          double& largest = largest_difference[half ? 1 : 0];
          if (magnitude > 0.0) largest = std::max(largest, std::fabs(a - b) / magnitude);
          if (!ok) {
            if (bad < 5)
              std::fprintf(stderr, "%s: (%d, %d, %d, %d): cuda %.9g cpu %.9g float64 %.9g (sum of |products| %.9g)\n",
                           name.c_str(), n, c, y, x, a, b, expected, magnitude);
            ++bad;
          }
        }
  EXPECT(bad == 0, "%s: %lld of %zu outputs differ", name.c_str(), (long long)bad, outputs);
  return bad == 0;
}

sd_activation activation_of(int which) {
  switch (which % 4) {
    case 1: return {SD_ACTIVATION_CLIP, 0.0f, FLT_MAX};  // ReLU
    case 2: return {SD_ACTIVATION_CLIP, 0.0f, 6.0f};     // ReLU6
    case 3: return {SD_ACTIVATION_HARDSWISH, 0.0f, 0.0f};
    default: return {SD_ACTIVATION_NONE, 0.0f, 0.0f};
  }
}

// Every kernel size / stride / dilation of the zoo's depthwise layers on odd sizes and 1x1 images,
// channel counts that are not multiples of anything, same / no / asymmetric padding.
void test_grid() {
  struct Size {
    int32_t height, width;
  };
  const Size sizes[] = {{13, 11}, {1, 1}, {9, 70}, {40, 33}};
  int cases = 0, passed = 0, which = 0;
  for (int32_t dtype : {SD_DTYPE_FLOAT32, SD_DTYPE_FLOAT16})
    for (int32_t kernel : {3, 5})
      for (int32_t stride : {1, 2})
        for (int32_t dilation : {1, 2, 4, 12})
          for (const Size& size : sizes) {
            Case k;
            k.dtype = dtype;
            k.in_height = size.height, k.in_width = size.width;
            k.kernel_height = k.kernel_width = kernel;
            k.stride_height = k.stride_width = stride;
            k.dilation_height = k.dilation_width = dilation;
            const int32_t same = dilation * (kernel - 1) / 2;
            // Same padding; TensorFlow's asymmetric "SAME" at stride 2 (more at the end); none
            // where the dilated kernel fits the image.
            const int32_t padding = which % 3;
            k.pad_top = k.pad_left = k.pad_bottom = k.pad_right = same;
            if (padding == 1 && stride == 2) {
              k.pad_top = k.pad_left = same > 0 ? same - 1 : 0;
              k.pad_bottom = k.pad_right = same + 1;
            }
            if (padding == 2 && dilation * (kernel - 1) < std::min(size.height, size.width))
              k.pad_top = k.pad_left = k.pad_bottom = k.pad_right = 0;
            const int32_t channel_choices[] = {1, 7, 17};
            k.channels = channel_choices[which % 3];
            k.batch = which % 5 == 0 ? 2 : 1;
            k.bias = which % 2 == 0;
            k.activation = activation_of(which / 2);
            k.seed = uint32_t(100 + which);
            ++which;
            ++cases;
            passed += check_case(k) ? 1 : 0;
          }
  std::printf("shape grid: %d of %d cases match the CPU and float64\n", passed, cases);
}

// The generic path (kernel sizes other than 3x3 and 5x5, mixed strides and dilations), the
// unstaged path (a window too large for shared memory), float16 input at an odd element address.
void test_special_cases() {
  int cases = 0, passed = 0;
  const auto run = [&](const Case& k) {
    ++cases;
    passed += check_case(k) ? 1 : 0;
  };
  for (int32_t dtype : {SD_DTYPE_FLOAT32, SD_DTYPE_FLOAT16}) {
    Case k;
    k.dtype = dtype;
    k.kernel_height = 1, k.kernel_width = 1, k.pad_top = k.pad_left = k.pad_bottom = k.pad_right = 0;
    run(k);
    k.kernel_height = k.kernel_width = 7, k.pad_top = k.pad_left = k.pad_bottom = k.pad_right = 3;
    k.activation = activation_of(3);
    run(k);
    k.kernel_height = 3, k.kernel_width = 5, k.stride_height = 2, k.stride_width = 1;
    k.dilation_height = 3, k.dilation_width = 2, k.pad_top = 2, k.pad_left = 4, k.pad_bottom = 0, k.pad_right = 3;
    k.in_height = 20, k.in_width = 37, k.channels = 3;
    run(k);
    k = Case{};  // stride 3, a kernel larger than the image (all but one tap in the padding)
    k.dtype = dtype, k.stride_height = k.stride_width = 3, k.kernel_height = k.kernel_width = 5;
    k.in_height = 2, k.in_width = 3, k.pad_top = k.pad_left = k.pad_bottom = k.pad_right = 4;
    run(k);
    k = Case{};  // 7x7 at dilation 12 on 100 x 100: the window of even 1 row per thread exceeds 16 KiB
    k.dtype = dtype, k.channels = 2, k.in_height = 100, k.in_width = 100, k.kernel_height = k.kernel_width = 7;
    k.dilation_height = k.dilation_width = 12, k.pad_top = k.pad_left = k.pad_bottom = k.pad_right = 36;
    k.activation = activation_of(2);
    run(k);
    k.kernel_height = k.kernel_width = 5, k.dilation_height = k.dilation_width = 24;  // the 5x5 unstaged
    k.pad_top = k.pad_left = k.pad_bottom = k.pad_right = 48;
    run(k);
    k.kernel_height = k.kernel_width = 3, k.dilation_height = k.dilation_width = 70;  // the 3x3 unstaged
    k.pad_top = k.pad_left = k.pad_bottom = k.pad_right = 70;
    run(k);
    k = Case{};  // rate 36 on a 32 x 32 map: only the centre tap sees the image
    k.dtype = dtype, k.channels = 5, k.in_height = k.in_width = 32, k.dilation_height = k.dilation_width = 36;
    k.pad_top = k.pad_left = k.pad_bottom = k.pad_right = 36, k.activation = activation_of(1);
    run(k);
  }
  Case k;  // float16 rows starting at odd and even element addresses
  k.dtype = SD_DTYPE_FLOAT16, k.misaligned = true, k.in_height = 9, k.in_width = 67, k.channels = 3;
  run(k);
  k.in_width = 64;
  run(k);
  std::printf("special cases: %d of %d match the CPU and float64\n", passed, cases);
  std::printf("largest |cuda - cpu| / (sum of |products| + |bias|): float32 %.2g, float16 %.2g\n",
              largest_difference[0], largest_difference[1]);
}

// A call the CUDA driver must refuse, with its message, and before touching the device.
void test_rejects_bad_input() {
  DeviceBuffer memory(4096);
  sd_depthwise_conv_io io{};
  io.input = memory.pointer, io.weight = memory.pointer, io.output = memory.pointer;
  io.dtype = SD_DTYPE_FLOAT32, io.batch = 1, io.channels = 2, io.in_height = 4, io.in_width = 4;
  io.kernel_height = io.kernel_width = 3, io.stride_height = io.stride_width = 1;
  io.dilation_height = io.dilation_width = 1, io.pad_top = io.pad_left = io.pad_bottom = io.pad_right = 1;
  io.out_height = 4, io.out_width = 4;
  EXPECT(sd_depthwise_conv_cuda(&io, nullptr) == SD_OK, "a valid call: %s", sd_last_error());
  io.out_width = 5;
  EXPECT(sd_depthwise_conv_cuda(&io, nullptr) == SD_ERROR_INVALID_ARGUMENT, "out_width 5");
  EXPECT(std::strstr(sd_last_error(), "out_height x out_width") != nullptr, "message: %s", sd_last_error());
  io.out_width = 4, io.kernel_width = 8;
  EXPECT(sd_depthwise_conv_cuda(&io, nullptr) == SD_ERROR_INVALID_ARGUMENT, "kernel_width 8");
  io.kernel_width = 3, io.dtype = 2;
  EXPECT(sd_depthwise_conv_cuda(&io, nullptr) == SD_ERROR_INVALID_ARGUMENT, "dtype 2");
  io.dtype = SD_DTYPE_FLOAT32, io.output = nullptr;
  EXPECT(sd_depthwise_conv_cuda(&io, nullptr) == SD_ERROR_INVALID_ARGUMENT, "NULL output");
  EXPECT(sd_depthwise_conv_cuda(nullptr, nullptr) == SD_ERROR_INVALID_ARGUMENT, "NULL io");
  // Valid for the CPU, but the padded row (2^31 + 1 columns) exceeds the kernel's 32-bit coordinates.
  io.output = memory.pointer, io.in_height = 1, io.in_width = 1, io.kernel_height = 1, io.kernel_width = 3;
  io.stride_width = 4, io.pad_top = io.pad_bottom = 0, io.pad_left = io.pad_right = 1 << 30;
  io.out_height = 1, io.out_width = (1 << 29);
  EXPECT(sd_depthwise_conv_validate(&io) == SD_OK, "%s", sd_last_error());
  EXPECT(sd_depthwise_conv_cuda(&io, nullptr) == SD_ERROR_INVALID_ARGUMENT, "padded width 2^31 + 1");
  EXPECT(std::strstr(sd_last_error(), "32-bit") != nullptr, "message: %s", sd_last_error());
  EXPECT(sd_cuda_stream_synchronize(nullptr) == SD_OK, "%s", sd_last_error());
}

}  // namespace

int main() {
  if (sd_cuda_device_count() == 0) {
    std::printf("no CUDA device: the CUDA depthwise convolution tests are skipped\n");
    return 0;
  }
  test_grid();
  test_special_cases();
  test_rejects_bad_input();
  return finish("CUDA depthwise convolution");
}
