// CPU driver of the depthwise convolution and of the separable block: threads over (image,
// channel, band of output rows), SIMD over output pixels.
//
// Staging. The input rows a band of output rows reads are first copied (float16 converted) into a
// per-thread buffer, zero-padded on the left and right, and split by column phase for a stride s:
// staged phase p holds the padded columns p, p + s, p + 2s, ... Output pixel x's tap kx reads padded
// column x*s + kx*d, which is element x + (kx*d)/s of phase (kx*d)%s: every tap of a run of output
// pixels is one contiguous load, whatever the stride, dilation or padding, and no bounds check is
// left in the inner loop (the staged row is as long as the widest read; rows in the top and bottom
// padding are skipped, not staged). A band's staged rows stay in the core's cache.
//
// Each output vector sums its taps in registers (kBlock vectors of output pixels at once, so that
// every broadcast weight serves kBlock multiply-adds), in a fixed order (ky, then kx), then adds
// the bias and applies the activation: the result does not depend on the band or the thread.
//
// The separable block stages and convolves a band of output rows of every channel into a tile
// (channels x band pixels, float32) and multiplies it by the pointwise weights there, kRows output
// channels times kColumns pixels in registers at a time; the depthwise result never leaves the tile.
//
// This file is compiled once per instruction set (SD_CPU_VARIANT names the namespace, see
// kernels/CMakeLists.txt); depthwise_conv.cpp picks the best one the CPU runs.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "../src/half.h"
#include "../src/scratch.h"
#include "../src/simd.h"
#include "../src/status_internal.h"
#include "../src/thread_pool.h"
#include "depthwise_conv_common.h"
#include "depthwise_conv_cpu.h"

namespace segdeploy::conv::SD_CPU_VARIANT {
namespace {

#if defined(__AVX512F__)
// The AVX-512 build (x86_64_v4, this driver only): 16 floats, 32 registers.
constexpr int kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
#else
using simd::kLanes;
using Vec = simd::Floats;
#endif

// Output vectors summed together (kBlock * kLanes pixels of one output row).
constexpr int kBlock = 4;
// The register block of the interior rows of a 3x3 kernel on rows of at most kBlockWidth pixels
// (convolve_block): output rows and vectors of each row summed together, the 9 broadcast weights
// in registers too. AVX-512 only: with 16 registers (SSE, AVX2) and on wider rows or 5x5 kernels
// the row-by-row path measured faster (benchmarks/plugins_layers.py).
constexpr bool kBlockInterior = kLanes == 16;
constexpr int kBlockRows = 4;
constexpr int kBlockVectors = 2;
constexpr int kBlockWidth = 4 * kLanes;
// Staged floats of one band (a band's input rows stay in the core's L2 cache).
constexpr int64_t kStagedFloats = 32 * 1024;
// The separable block's tile (channels x band pixels) and register block.
constexpr int64_t kTileFloats = 128 * 1024;
constexpr int32_t kTilePixels = 128;
constexpr int kRows = 6;
constexpr int kColumnVectors = 2;
constexpr int kColumns = kColumnVectors * kLanes;

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, const Vec& v) { std::memcpy(p, &v, sizeof v); }
inline Vec broadcast(float x) { return x - Vec{}; }

// The activation of a vector, lane by lane exactly as activate() (depthwise_conv_common.h).
inline Vec activate(Vec x, sd_activation activation) {
  switch (activation.kind) {
    case SD_ACTIVATION_CLIP: {
      const Vec lower = broadcast(activation.lower), upper = broadcast(activation.upper);
      x = x < lower ? lower : x;  // NaN stays NaN
      return x > upper ? upper : x;
    }
    case SD_ACTIVATION_HARDSWISH: {
      Vec gate = x * kOneSixth + 0.5f;
      gate = gate > 0.0f ? gate : Vec{};
      gate = gate < 1.0f ? gate : broadcast(1.0f);
      return x * gate;
    }
    default:
      return x;
  }
}

void halves_to_floats(const uint16_t* in, float* out, int64_t count) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__F16C__)
  for (; i + 8 <= count; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
#elif defined(__aarch64__)
  for (; i < count; ++i) {
    __fp16 half;
    std::memcpy(&half, in + i, sizeof half);
    out[i] = float(half);
  }
#endif
  for (; i < count; ++i) out[i] = half_to_float(in[i]);
}

void floats_to_halves(const float* in, uint16_t* out, int64_t count) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__F16C__)
  for (; i + 8 <= count; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
#elif defined(__aarch64__)
  for (; i < count; ++i) {
    const __fp16 half = __fp16(in[i]);
    std::memcpy(out + i, &half, sizeof half);
  }
#endif
  for (; i < count; ++i) out[i] = float_to_half(in[i]);
}

// A tensor of the call's dtype as float32: the given one, or a converted copy.
class Floats {
 public:
  Floats(const void* data, int64_t count, int32_t dtype) {
    if (data == nullptr) return;
    if (dtype == SD_DTYPE_FLOAT32) {
      data_ = static_cast<const float*>(data);
      return;
    }
    copy_.resize(size_t(count));
    halves_to_floats(static_cast<const uint16_t*>(data), copy_.data(), count);
    data_ = copy_.data();
  }
  const float* data() const { return data_; }

 private:
  std::vector<float> copy_;
  const float* data_ = nullptr;
};

// The call's geometry: staged row layout, tap offsets and bands.
struct Plan {
  const sd_depthwise_conv_io& io;
  int32_t vec_width = 0;    // out_width rounded up to whole vectors: the pixels computed per row
  int32_t phase_width = 0;  // floats of one phase of a staged row
  int32_t row_floats = 0;   // stride_width phases: one staged row
  int32_t tap_offset[kMaxKernel] = {};  // per kx: where its reads start in a staged row
  int32_t band_rows = 0;    // output rows per band
  int32_t bands = 0;
  int32_t max_staged_rows = 0;
  uint64_t call_id = 0;  // unique per call: a thread's staging buffer knows whose padding it holds
  Floats weight, bias;

  Plan(const sd_depthwise_conv_io& call, int32_t rows_per_band)
      : io(call),
        weight(call.weight, int64_t(call.channels) * call.kernel_height * call.kernel_width, call.dtype),
        bias(call.bias, call.channels, call.dtype) {
    const int32_t sw = io.stride_width, dw = io.dilation_width;
    vec_width = int32_t(round_up(io.out_width, kLanes));
    phase_width = int32_t(round_up(vec_width + (io.kernel_width - 1) * dw / sw, kLanes));
    row_floats = sw * phase_width;
    for (int32_t kx = 0; kx < io.kernel_width; ++kx)
      tap_offset[kx] = (kx * dw) % sw * phase_width + kx * dw / sw;
    const int32_t halo = (io.kernel_height - 1) * io.dilation_height;
    if (rows_per_band <= 0) {  // as many as fit the staging budget, and at least as many as the halo
      const int64_t budget = std::max<int64_t>(1, kStagedFloats / row_floats);
      int64_t rows = budget > halo ? (budget - halo - 1) / io.stride_height + 1 : 1;
      rows = std::max<int64_t>(rows, std::max(1, halo / io.stride_height));
      rows_per_band = int32_t(std::min<int64_t>(rows, io.out_height));
    }
    band_rows = std::min(rows_per_band, io.out_height);
    bands = (io.out_height + band_rows - 1) / band_rows;
    max_staged_rows = std::min(io.in_height, (band_rows - 1) * io.stride_height + halo + 1);
    static std::atomic<uint64_t> calls{0};
    call_id = calls.fetch_add(1, std::memory_order_relaxed) + 1;
  }

  // Floats of a thread's staging buffer: the staged rows and one padded row.
  int64_t staging_floats() const { return int64_t(max_staged_rows + 1) * row_floats; }
};

// Even and odd elements of a[0..2*kLanes) (a and b): the two halves of a stride-2 split.
inline void deinterleave(const Vec& a, const Vec& b, Vec* even, Vec* odd) {
#if defined(__AVX512F__)
  *even = simd::shuffle<0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30>(a, b);
  *odd = simd::shuffle<1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31>(a, b);
#elif defined(__AVX__)
  *even = simd::shuffle<0, 2, 4, 6, 8, 10, 12, 14>(a, b);
  *odd = simd::shuffle<1, 3, 5, 7, 9, 11, 13, 15>(a, b);
#else
  *even = simd::shuffle<0, 2, 4, 6>(a, b);
  *odd = simd::shuffle<1, 3, 5, 7>(a, b);
#endif
}

// Input row `row` of plane `plane` (image * channels + channel), split by phase into staged
// (row_floats floats); `padded` is room for one padded row (float16 and strides > 2). Writes only
// the image's columns: the padding columns are the same in every staged row, zeroed once per
// call and thread (staging_buffer).
void stage_row(const Plan& plan, int64_t plane, int32_t row, float* staged, float* padded) {
  const sd_depthwise_conv_io& io = plan.io;
  const int32_t stride = io.stride_width, width = plan.phase_width;
  const int64_t offset = (plane * io.in_height + row) * io.in_width;
  if (stride == 2 && io.dtype == SD_DTYPE_FLOAT32) {
    // Straight from the input: input column 2m + parity is element m + start[parity] of phase
    // (parity + pad_left) % 2, start = (pad_left + parity) / 2; the rest is zero padding.
    const float* in = static_cast<const float*>(io.input) + offset;
    float* phase[2];
    int32_t start[2], count[2];
    for (int32_t parity = 0; parity < 2; ++parity) {
      phase[parity] = staged + (parity + io.pad_left) % 2 * width;
      start[parity] = std::min(width, (io.pad_left + parity) / 2);
      count[parity] = std::max(0, std::min((io.in_width - parity + 1) / 2, width - start[parity]));
    }
    const int32_t pairs = std::min(count[0], count[1]);
    float* even = phase[0] + start[0];
    float* odd = phase[1] + start[1];
    int32_t m = 0;
    for (; m + kLanes <= pairs && 2 * (m + kLanes) <= io.in_width; m += kLanes) {
      Vec e, o;
      deinterleave(load(in + 2 * m), load(in + 2 * m + kLanes), &e, &o);
      store(even + m, e);
      store(odd + m, o);
    }
    for (int32_t j = m; j < count[0]; ++j) even[j] = in[2 * j];
    for (int32_t j = m; j < count[1]; ++j) odd[j] = in[2 * j + 1];
    return;
  }
  float* out = stride == 1 ? staged : padded;
  const int32_t left = std::min(io.pad_left, plan.row_floats);
  const int32_t count = std::max(0, std::min(io.in_width, plan.row_floats - io.pad_left));
  // Rows are short (tens of floats): an inline loop, not a library call.
  if (io.dtype == SD_DTYPE_FLOAT32) {
    const float* in = static_cast<const float*>(io.input) + offset;
    float* to = out + left;
    int32_t i = 0;
    for (; i + kLanes <= count; i += kLanes) store(to + i, load(in + i));
    for (; i < count; ++i) to[i] = in[i];
  } else {
    halves_to_floats(static_cast<const uint16_t*>(io.input) + offset, out + left, count);
  }
  if (stride == 1) return;
  if (stride == 2) {
    for (int32_t j = 0; j < width; j += kLanes) {
      Vec e, o;
      deinterleave(load(padded + 2 * j), load(padded + 2 * j + kLanes), &e, &o);
      store(staged + j, e);
      store(staged + width + j, o);
    }
    return;
  }
  for (int32_t phase = 0; phase < stride; ++phase)
    for (int32_t j = 0; j < width; ++j) staged[phase * width + j] = padded[j * stride + phase];
}

// R output rows (each `step` rows below the last) times B vectors of a K x K kernel, stride_width
// 1, whose taps all see the image, where every input row the first output row's tap ky reads is
// the one the next row's tap ky - 1 reads (stride_height * step == dilation_height): input row i
// (rows[i], at the block's first pixel) is loaded once for the up to K output rows it feeds; tap
// kx reads `dilation` floats after tap kx - 1. Each sum adds its taps in the order of
// convolve_rows' (ky, then kx): the same floats.
template <int K, int R, int B>
inline void convolve_block(const float* const* rows, int64_t dilation, const Vec* weights, const Vec& bias,
                           Vec (&sum)[R][B]) {
  for (int j = 0; j < R; ++j)
    for (int b = 0; b < B; ++b) sum[j][b] = bias;
#pragma GCC unroll 16
  for (int i = 0; i < K + R - 1; ++i) {
    const float* row = rows[i];
#pragma GCC unroll 8
    for (int kx = 0; kx < K; ++kx) {
#pragma GCC unroll 4
      for (int b = 0; b < B; ++b) {
        const Vec value = load(row + kx * dilation + b * kLanes);
#pragma GCC unroll 8
        for (int j = 0; j < R; ++j) {
          const int ky = i - j;
          if (ky >= 0 && ky < K) sum[j][b] += weights[ky * K + kx] * value;
        }
      }
    }
  }
}

// Output rows [y_begin, y_end) (y_end - y_begin a multiple of R * step) of a K x K kernel,
// stride_width 1, every tap of them inside the staged rows (from first_row): blocks of R rows
// `step` apart (convolve_block), B vectors wide and then one.
template <int K, int R, int B, typename Emit>
void convolve_interior(const Plan& plan, const float* staged, int32_t first_row, const float* weight, float bias,
                       int32_t y_begin, int32_t y_end, int32_t step, const Emit& emit) {
  const sd_depthwise_conv_io& io = plan.io;
  const sd_activation activation = io.activation;
  const int32_t vec_width = plan.vec_width;
  const int64_t row_step = int64_t(io.dilation_height) * plan.row_floats;
  const int64_t dilation = io.dilation_width;
  Vec weights[K * K];
  for (int t = 0; t < K * K; ++t) weights[t] = broadcast(weight[t]);
  const Vec bias_vector = broadcast(bias);
  for (int32_t base = y_begin; base < y_end; base += R * step) {
    for (int32_t phase = 0; phase < step; ++phase) {
      const int32_t y = base + phase;  // rows y, y + step, ..., y + (R - 1) * step
      const float* rows[K + R - 1];
      rows[0] = staged + int64_t(y * io.stride_height - io.pad_top - first_row) * plan.row_floats;
      for (int i = 1; i < K + R - 1; ++i) rows[i] = rows[i - 1] + row_step;
      int32_t x = 0;
      for (; x + B * kLanes <= vec_width; x += B * kLanes) {
        Vec sum[R][B];
        convolve_block<K, R, B>(rows, dilation, weights, bias_vector, sum);
        for (int i = 0; i < K + R - 1; ++i) rows[i] += B * kLanes;
        for (int j = 0; j < R; ++j)
          for (int b = 0; b < B; ++b) emit(y + j * step, x + b * kLanes, activate(sum[j][b], activation));
      }
      for (; x < vec_width; x += kLanes) {
        Vec sum[R][1];
        convolve_block<K, R, 1>(rows, dilation, weights, bias_vector, sum);
        for (int i = 0; i < K + R - 1; ++i) rows[i] += kLanes;
        for (int j = 0; j < R; ++j) emit(y + j * step, x, activate(sum[j][0], activation));
      }
    }
  }
}

// The output rows [y_begin, y_end) of one plane whose in-image input rows [first_row, last_row]
// are staged: each output vector's bias + sum of taps, activated, handed to emit(y, x, vector).
template <int KW, typename Emit>
void convolve_rows(const Plan& plan, const float* staged, int32_t first_row, int32_t last_row, const float* weight,
                   float bias, int32_t y_begin, int32_t y_end, const Emit& emit) {
  const sd_depthwise_conv_io& io = plan.io;
  // Locals, so that the compiler keeps them in registers across the output stores.
  const sd_activation activation = io.activation;
  const int32_t vec_width = plan.vec_width, row_floats = plan.row_floats;
  const int32_t kernel_height = io.kernel_height, stride = io.stride_height, dilation = io.dilation_height;
  const int32_t pad_top = io.pad_top;
  int32_t offset[KW];
  for (int kx = 0; kx < KW; ++kx) offset[kx] = plan.tap_offset[kx];
  const Vec bias_vector = broadcast(bias);
  int32_t interior_begin = y_end, interior_end = y_end;  // rows done by convolve_interior
  if constexpr (kBlockInterior && KW == 3) {
    if (kernel_height == KW && dilation % stride == 0 && io.stride_width == 1 && vec_width <= kBlockWidth) {
      // Rows whose taps all lie in [first_row, last_row], in whole blocks of R rows `step` apart.
      constexpr int R = kBlockRows;
      const int32_t step = dilation / stride;
      const int32_t lowest = std::max(y_begin, (first_row + pad_top + stride - 1) / stride);
      const int32_t last_top = last_row + pad_top - (KW - 1) * dilation;  // the last row's top tap
      const int32_t highest = last_top >= 0 ? std::min(y_end, last_top / stride + 1) : lowest;
      if (highest - lowest >= R * step) {
        interior_begin = lowest;
        interior_end = lowest + (highest - lowest) / (R * step) * (R * step);
        convolve_interior<KW, R, kBlockVectors>(plan, staged, first_row, weight, bias, lowest, interior_end, step, emit);
      }
    }
  }
  for (int32_t y = y_begin; y < y_end; ++y) {
    if (y == interior_begin) y = interior_end;
    if (y >= y_end) break;
    // The kernel rows that see the image (the others read only zero padding).
    const float* rows[kMaxKernel];
    const float* weights[kMaxKernel];
    int taps = 0;
    for (int32_t ky = 0; ky < kernel_height; ++ky) {
      const int32_t row = y * stride - pad_top + ky * dilation;
      if (row < first_row || row > last_row) continue;
      rows[taps] = staged + int64_t(row - first_row) * row_floats;
      weights[taps] = weight + ky * KW;
      ++taps;
    }
    int32_t x = 0;
    for (; x + kBlock * kLanes <= vec_width; x += kBlock * kLanes) {
      Vec s0 = bias_vector, s1 = bias_vector, s2 = bias_vector, s3 = bias_vector;
      static_assert(kBlock == 4, "four sums per block");
      for (int t = 0; t < taps; ++t) {
        const float* in = rows[t] + x;
        const float* w = weights[t];
#pragma GCC unroll 7
        for (int kx = 0; kx < KW; ++kx) {
          const Vec wv = broadcast(w[kx]);
          const float* p = in + offset[kx];
          s0 += wv * load(p);
          s1 += wv * load(p + kLanes);
          s2 += wv * load(p + 2 * kLanes);
          s3 += wv * load(p + 3 * kLanes);
        }
      }
      emit(y, x, activate(s0, activation));
      emit(y, x + kLanes, activate(s1, activation));
      emit(y, x + 2 * kLanes, activate(s2, activation));
      emit(y, x + 3 * kLanes, activate(s3, activation));
    }
    for (; x + 2 * kLanes <= vec_width; x += 2 * kLanes) {  // two sums in flight, not one
      Vec s0 = bias_vector, s1 = bias_vector;
      for (int t = 0; t < taps; ++t) {
        const float* in = rows[t] + x;
        const float* w = weights[t];
#pragma GCC unroll 7
        for (int kx = 0; kx < KW; ++kx) {
          const Vec wv = broadcast(w[kx]);
          s0 += wv * load(in + offset[kx]);
          s1 += wv * load(in + offset[kx] + kLanes);
        }
      }
      emit(y, x, activate(s0, activation));
      emit(y, x + kLanes, activate(s1, activation));
    }
    for (; x < vec_width; x += kLanes) {
      Vec sum = bias_vector;
      for (int t = 0; t < taps; ++t) {
        const float* in = rows[t] + x;
#pragma GCC unroll 7
        for (int kx = 0; kx < KW; ++kx) sum += broadcast(weights[t][kx]) * load(in + offset[kx]);
      }
      emit(y, x, activate(sum, activation));
    }
  }
}

// This thread's scratch for a call: `before` floats (the separable block's tile), then the staging
// buffer, whose padding columns are zeroed at the thread's first task of the call; nullptr when out
// of memory.
float* thread_scratch(const Plan& plan, int64_t before) {
  thread_local Scratch scratch;
  thread_local const float* zeroed = nullptr;  // the staging buffer zeroed for zeroed_call
  thread_local uint64_t zeroed_call = 0;
  float* memory = scratch.reserve(size_t(before + plan.staging_floats()));
  if (memory == nullptr) return nullptr;
  float* staging = memory + before;
  if (staging != zeroed || zeroed_call != plan.call_id) {
    std::fill(staging, staging + plan.staging_floats(), 0.0f);
    zeroed = staging;
    zeroed_call = plan.call_id;
  }
  return memory;
}

// Output rows [y_begin, y_end) of plane `plane` (channel `channel`): stages the input rows they
// read into `staging` (Plan::staging_floats), then convolves, handing each vector to emit.
template <typename Emit>
void depthwise_rows(const Plan& plan, int64_t plane, int32_t channel, int32_t y_begin, int32_t y_end, float* staging,
                    const Emit& emit) {
  const sd_depthwise_conv_io& io = plan.io;
  const int32_t first_row = std::max(0, y_begin * io.stride_height - io.pad_top);
  const int32_t last_row = std::min(io.in_height - 1, (y_end - 1) * io.stride_height - io.pad_top +
                                                          (io.kernel_height - 1) * io.dilation_height);
  float* padded = staging + int64_t(plan.max_staged_rows) * plan.row_floats;
  for (int32_t row = first_row; row <= last_row; ++row)
    stage_row(plan, plane, row, staging + int64_t(row - first_row) * plan.row_floats, padded);
  const float* weight = plan.weight.data() + int64_t(channel) * io.kernel_height * io.kernel_width;
  const float bias = plan.bias.data() != nullptr ? plan.bias.data()[channel] : 0.0f;
  switch (io.kernel_width) {
#define SD_KERNEL_WIDTH(width) \
  case width:                  \
    return convolve_rows<width>(plan, staging, first_row, last_row, weight, bias, y_begin, y_end, emit);
    SD_KERNEL_WIDTH(1)
    SD_KERNEL_WIDTH(2)
    SD_KERNEL_WIDTH(3)
    SD_KERNEL_WIDTH(4)
    SD_KERNEL_WIDTH(5)
    SD_KERNEL_WIDTH(6)
    SD_KERNEL_WIDTH(7)
#undef SD_KERNEL_WIDTH
    default:
      return;  // validated: 1..kMaxKernel
  }
}

// Stores the first `count` (<= kLanes) values of a vector as `dtype` at out (element offset).
inline void store_values(void* out, int64_t offset, int32_t dtype, const Vec& value, int32_t count) {
  if (dtype == SD_DTYPE_FLOAT32) {
    float* to = static_cast<float*>(out) + offset;
    if (count == kLanes)
      store(to, value);
    else
      std::memcpy(to, &value, size_t(count) * sizeof(float));
    return;
  }
  uint16_t halves[kLanes];
  floats_to_halves(reinterpret_cast<const float*>(&value), halves, count);
  std::memcpy(static_cast<uint16_t*>(out) + offset, halves, size_t(count) * sizeof(uint16_t));
}

// Runs body(task) for task in [0, tasks) on up to `threads` threads; false when a task failed to
// get its scratch memory.
template <typename Body>
bool run_tasks(int64_t tasks, int threads, const Body& body) {
  PooledThreads pooled(int(std::min<int64_t>(threads, tasks)));
  std::atomic<bool> out_of_memory{false};
  pooled.pool().parallel_for(
      tasks,
      [&](int64_t task) {
        if (!body(task)) out_of_memory.store(true, std::memory_order_relaxed);
      },
      1);
  return !out_of_memory.load();
}

// The separable block's pointwise weights packed for the register block: block b's weights for
// input channel c are packed[(b * channels + c) * kRows + r] = weight of output channel b * kRows + r
// (0 past out_channels).
std::vector<float> pack_pointwise(const sd_separable_conv_io& io) {
  const int32_t channels = io.depthwise.channels;
  const Floats weight(io.pointwise_weight, int64_t(io.out_channels) * channels, io.depthwise.dtype);
  const int64_t blocks = (io.out_channels + kRows - 1) / kRows;
  std::vector<float> packed(size_t(blocks * channels * kRows), 0.0f);
  for (int32_t o = 0; o < io.out_channels; ++o)
    for (int32_t c = 0; c < channels; ++c)
      packed[size_t((int64_t(o / kRows) * channels + c) * kRows + o % kRows)] = weight.data()[int64_t(o) * channels + c];
  return packed;
}

// Where the depthwise value of channel c at band pixel p (row p / vec_width, column p % vec_width
// of the band) lies in a tile: blocks of kColumns pixels, each holding its pixels of every channel
// in turn, so that the pointwise product reads the tile in order.
inline int64_t tile_index(int32_t channels, int32_t c, int64_t p) {
  return (p / kColumns * channels + c) * kColumns + p % kColumns;
}

// Pointwise 1x1 of a band's tile (tile_index), + bias, activated, into the output rows
// [y_begin, y_end).
void pointwise_band(const sd_separable_conv_io& io, const Plan& plan, const float* packed, const float* bias,
                    const float* tile, int32_t image, int32_t y_begin, int32_t y_end) {
  const int32_t channels = io.depthwise.channels;
  const int32_t out_height = io.depthwise.out_height, out_width = io.depthwise.out_width;
  const int64_t pixels = int64_t(y_end - y_begin) * plan.vec_width;
  for (int32_t block = 0; block * kRows < io.out_channels; ++block) {
    const float* block_weights = packed + int64_t(block) * channels * kRows;
    const int32_t rows = std::min(kRows, io.out_channels - block * kRows);
    for (int64_t p = 0; p < pixels; p += kColumns) {
      Vec sum[kRows][kColumnVectors] = {};
      const float* in = tile + tile_index(channels, 0, p);
      const float* w = block_weights;
      for (int32_t c = 0; c < channels; ++c, in += kColumns, w += kRows) {
        Vec x[kColumnVectors];
        for (int v = 0; v < kColumnVectors; ++v) x[v] = load(in + v * kLanes);
        for (int r = 0; r < kRows; ++r) {
          const Vec weight = broadcast(w[r]);
          for (int v = 0; v < kColumnVectors; ++v) sum[r][v] += weight * x[v];
        }
      }
      for (int r = 0; r < rows; ++r) {
        const int32_t o = block * kRows + r;
        const Vec bias_vector = broadcast(bias != nullptr ? bias[o] : 0.0f);
        for (int v = 0; v < kColumnVectors; ++v) {
          const int64_t pixel = p + v * kLanes;
          if (pixel >= pixels) break;
          const int32_t y = y_begin + int32_t(pixel / plan.vec_width);
          const int32_t x = int32_t(pixel % plan.vec_width);
          if (x >= out_width) continue;
          const Vec value = activate(sum[r][v] + bias_vector, io.pointwise_activation);
          store_values(io.output, ((int64_t(image) * io.out_channels + o) * out_height + y) * out_width + x,
                       io.depthwise.dtype, value, std::min(kLanes, out_width - x));
        }
      }
    }
  }
}

}  // namespace

Error run_depthwise(const sd_depthwise_conv_io& io, int threads) {
  const Plan plan(io, 0);
  const int64_t planes = int64_t(io.batch) * io.channels;
  const bool ok = run_tasks(planes * plan.bands, threads, [&](int64_t task) {
    float* staging = thread_scratch(plan, 0);
    if (staging == nullptr) return false;
    const int64_t plane = task / plan.bands;
    const int32_t channel = int32_t(plane % io.channels);
    const int32_t y_begin = int32_t(task % plan.bands) * plan.band_rows;
    const int32_t y_end = std::min(io.out_height, y_begin + plan.band_rows);
    const int64_t plane_offset = plane * io.out_height * io.out_width;
    depthwise_rows(plan, plane, channel, y_begin, y_end, staging, [&](int32_t y, int32_t x, Vec value) {
      store_values(io.output, plane_offset + int64_t(y) * io.out_width + x, io.dtype, value,
                   std::min(kLanes, io.out_width - x));
    });
    return true;
  });
  return ok ? Error() : out_of_host_memory();
}

Error run_separable(const sd_separable_conv_io& io, int threads) {
  const sd_depthwise_conv_io& depthwise = io.depthwise;
  // Bands of whole output rows, about kTilePixels pixels, the tile within kTileFloats.
  const int32_t vec_width = int32_t(round_up(depthwise.out_width, kLanes));
  const int64_t tile_pixels = std::min<int64_t>(kTilePixels, kTileFloats / depthwise.channels);
  const int32_t band_rows = int32_t(std::max<int64_t>(1, std::min<int64_t>(depthwise.out_height, tile_pixels / vec_width)));
  const Plan plan(depthwise, band_rows);
  const std::vector<float> packed = pack_pointwise(io);
  const Floats pointwise_bias(io.pointwise_bias, io.out_channels, depthwise.dtype);
  const int64_t tile_floats = int64_t(depthwise.channels) * round_up(int64_t(plan.band_rows) * plan.vec_width, kColumns);
  const bool ok = run_tasks(int64_t(depthwise.batch) * plan.bands, threads, [&](int64_t task) {
    float* tile = thread_scratch(plan, tile_floats);
    if (tile == nullptr) return false;
    float* staging = tile + tile_floats;
    const int32_t image = int32_t(task / plan.bands);
    const int32_t y_begin = int32_t(task % plan.bands) * plan.band_rows;
    const int32_t y_end = std::min(depthwise.out_height, y_begin + plan.band_rows);
    const int64_t used = int64_t(y_end - y_begin) * plan.vec_width;
    const int32_t channels = depthwise.channels;
    for (int32_t c = 0; c < channels; ++c) {
      depthwise_rows(plan, int64_t(image) * channels + c, c, y_begin, y_end, staging,
                     [&](int32_t y, int32_t x, Vec value) {
                       store(tile + tile_index(channels, c, int64_t(y - y_begin) * plan.vec_width + x), value);
                     });
      // The register block's columns past the band's pixels read zeros, not stale floats.
      for (int64_t p = used; p < round_up(used, kColumns); ++p) tile[tile_index(channels, c, p)] = 0.0f;
    }
    pointwise_band(io, plan, packed.data(), pointwise_bias.data(), tile, image, y_begin, y_end);
    return true;
  });
  return ok ? Error() : out_of_host_memory();
}

}  // namespace segdeploy::conv::SD_CPU_VARIANT
