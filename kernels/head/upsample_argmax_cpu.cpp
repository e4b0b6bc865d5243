// CPU driver of the fused upsample + argmax: threads over (image, band of output rows), SIMD
// over output pixels.
//
// The interpolation is separable. For a tile of output columns, each source row that the band's
// output rows read is first interpolated horizontally, all classes at once, into a "column-
// interpolated row" (classes x tile width floats; two of them stay in cache, the band walks down
// the source rows). Each output row is then one vertical blend of its two column-interpolated
// rows per class, and a running maximum and argmax over the classes kept in registers for
// kStep output pixels: the full-resolution scores exist only as those registers.
//
// A column-interpolated row is stored in blocks of kStep columns, each block holding its columns
// for every class in turn ([block][class][kStep]): the class loop then reads memory in order.
// (Planes of one class per tile width put every class's values 4 KiB apart, on the same cache
// sets, and the loop waited for memory.)
//
// Each output pixel's value is computed by the same operations whatever the band, tile or
// thread, so the labels do not depend on the thread count.
//
// This file is compiled once per instruction set (SD_CPU_VARIANT names the namespace, see
// kernels/CMakeLists.txt); upsample_argmax.cpp picks the best one the CPU runs.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "../src/half.h"
#include "../src/scratch.h"
#include "../src/simd.h"
#include "../src/status_internal.h"
#include "../src/thread_pool.h"
#include "upsample_argmax_common.h"
#include "upsample_argmax_cpu.h"

namespace segdeploy::head::SD_CPU_VARIANT {
namespace {

// A Vec is one native register of floats (SSE/NEON: 4, AVX: 8; src/simd.h); kUnroll of them
// (kStep output pixels) go through the class loop together so that their dependency chains overlap.
using simd::kLanes;
using Vec = simd::Floats;
using IntVec = simd::Ints;
constexpr int kUnroll = 2;
constexpr int kStep = kLanes * kUnroll;

// Floats of one column-interpolated row (all classes): two of them, plus the labels, stay in the
// core's L2 cache. The tile width follows from it.
constexpr int64_t kRowFloats = 32 * 1024;
constexpr int32_t kMinTileWidth = 4 * kStep;

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// The call's geometry: taps of every output row and (padded) column, tiles and bands.
struct Plan {
  const sd_upsample_argmax_io& io;
  std::vector<LinearTap> rows;
  // Column taps as separate arrays (loaded as vectors), padded to padded_width by repeating the
  // last column's taps.
  std::vector<int32_t> column_first, column_second;
  std::vector<float> column_first_weight, column_second_weight;
  // Per group of kLanes columns (the x86-64-v3 build reads a group's taps from one register of
  // source values with a permutation): the group's lowest first and second tap, each column's
  // offsets from them, and whether they all fit in one register (not when downsampling).
  std::vector<int32_t> group_first, group_second;
  std::vector<uint8_t> group_fits;
  std::vector<int32_t> column_first_offset, column_second_offset;
  int32_t padded_width = 0;
  int32_t tile_width = 0;  // a multiple of kStep
  int32_t tiles = 0;
  int32_t band_height = 0;
  int32_t bands = 0;

  Plan(const sd_upsample_argmax_io& call, int threads) : io(call) {
    rows.resize(size_t(io.out_height));
    for (int32_t y = 0; y < io.out_height; ++y) rows[size_t(y)] = row_tap(io, y);
    padded_width = int32_t(round_up(io.out_width, kStep));
    column_first.resize(size_t(padded_width));
    column_second.resize(size_t(padded_width));
    column_first_weight.resize(size_t(padded_width));
    column_second_weight.resize(size_t(padded_width));
    for (int32_t x = 0; x < padded_width; ++x) {
      const LinearTap tap = column_tap(io, std::min(x, io.out_width - 1));
      column_first[size_t(x)] = tap.first;
      column_second[size_t(x)] = tap.second;
      column_first_weight[size_t(x)] = tap.first_weight;
      column_second_weight[size_t(x)] = tap.second_weight;
    }
    const int32_t groups = padded_width / kLanes;
    group_first.resize(size_t(groups));
    group_second.resize(size_t(groups));
    group_fits.resize(size_t(groups));
    column_first_offset.resize(size_t(padded_width));
    column_second_offset.resize(size_t(padded_width));
    for (int32_t g = 0; g < groups; ++g) {
      const size_t x0 = size_t(g) * kLanes;
      group_first[size_t(g)] = column_first[x0];  // taps grow with x
      group_second[size_t(g)] = column_second[x0];
      bool fits = true;
      for (size_t x = x0; x < x0 + kLanes; ++x) {
        column_first_offset[x] = column_first[x] - column_first[x0];
        column_second_offset[x] = column_second[x] - column_second[x0];
        fits = fits && column_first_offset[x] < kLanes && column_second_offset[x] < kLanes;
      }
      group_fits[size_t(g)] = fits;
    }
    const int64_t widest = std::max<int64_t>(kMinTileWidth, kRowFloats / io.classes / kStep * kStep);
    tiles = int32_t((padded_width + widest - 1) / widest);
    tile_width = int32_t(round_up((padded_width + tiles - 1) / tiles, kStep));
    tiles = int32_t((padded_width + tile_width - 1) / tile_width);
    // Bands: a few per thread so that threads finish together; each band interpolates its first
    // source rows again, so no more than needed.
    int64_t bands_per_image = 1;
    if (threads > 1) bands_per_image = (4 * int64_t(threads) + io.batch - 1) / io.batch;
    bands_per_image = std::min<int64_t>(bands_per_image, std::max(1, io.out_height / 8));
    band_height = int32_t((io.out_height + bands_per_image - 1) / bands_per_image);
    bands = int32_t((io.out_height + band_height - 1) / band_height);
  }
};

// Floats per class in the source buffer: a row, and kLanes more that a register load of the last
// taps may read (zeros, never used).
int64_t source_stride(const sd_upsample_argmax_io& io) { return round_up(io.in_width, kLanes) + kLanes; }

// Source row `row` of every class of image `image`, as float, into buffer[c * source_stride].
void load_source_rows(const sd_upsample_argmax_io& io, int32_t image, int32_t row, float* buffer) {
  const int64_t stride = source_stride(io);
  const size_t element = io.scores_dtype == SD_DTYPE_FLOAT32 ? sizeof(float) : sizeof(uint16_t);
  const size_t row_bytes = size_t(io.in_width) * element;
  const auto address = [&](int32_t c) {
    const int64_t offset = ((int64_t(image) * io.classes + c) * io.in_height + row) * io.in_width;
    return static_cast<const char*>(io.scores) + offset * int64_t(element);
  };
  for (int32_t c = 0; c < io.classes; ++c) {
    // The next class's row is in another plane, far from this one: fetch it while this one is read.
    if (c + 1 < io.classes)
      for (size_t offset = 0; offset < row_bytes; offset += 64) __builtin_prefetch(address(c + 1) + offset);
    float* out = buffer + c * stride;
    if (io.scores_dtype == SD_DTYPE_FLOAT32) {
      std::memcpy(out, address(c), row_bytes);
    } else {
      const uint16_t* half = reinterpret_cast<const uint16_t*>(address(c));
      int32_t x = 0;
#if defined(__AVX2__) && defined(__F16C__)
      for (; x + 8 <= io.in_width; x += 8)
        _mm256_storeu_ps(out + x, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(half + x))));
#endif
      for (; x < io.in_width; ++x) out[x] = half_to_float(half[x]);
    }
    std::fill(out + io.in_width, out + stride, 0.0f);
  }
}

// Column-interpolated row: for columns first_column + j of the tile and every class c, from the
// source rows in `source` (load_source_rows), into out[(j / kStep * classes + c) * kStep + j % kStep]:
// group by group of kLanes columns (their taps loaded once), class after class (stores in order).
void interpolate_columns(const Plan& plan, int32_t first_column, const float* source, float* out) {
  const sd_upsample_argmax_io& io = plan.io;
  const int64_t stride = source_stride(io);
  const int32_t columns = std::min(plan.tile_width, plan.padded_width - first_column);
  for (int32_t j = 0; j < columns; j += kLanes) {
    const size_t x = size_t(first_column + j);
    float* o = out + int64_t(j / kStep) * io.classes * kStep + j % kStep;
    Vec wa, wb;
    std::memcpy(&wa, plan.column_first_weight.data() + x, sizeof wa);
    std::memcpy(&wb, plan.column_second_weight.data() + x, sizeof wb);
#if defined(__AVX2__)
    static_assert(kLanes == 8, "one group of columns per register");
    const size_t group = x / kLanes;
    if (plan.group_fits[group]) {
      const __m256i first_offset = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&plan.column_first_offset[x]));
      const __m256i second_offset = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&plan.column_second_offset[x]));
      const float* first = source + plan.group_first[group];
      const float* second = source + plan.group_second[group];
      for (int32_t c = 0; c < io.classes; ++c) {
        const Vec va = simd::bit_cast<Vec>(_mm256_permutevar8x32_ps(_mm256_loadu_ps(first + c * stride), first_offset));
        const Vec vb = simd::bit_cast<Vec>(_mm256_permutevar8x32_ps(_mm256_loadu_ps(second + c * stride), second_offset));
        const Vec value = wa * va + wb * vb;
        std::memcpy(o + c * kStep, &value, sizeof value);
      }
    } else {
      const __m256i first_index = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&plan.column_first[x]));
      const __m256i second_index = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&plan.column_second[x]));
      for (int32_t c = 0; c < io.classes; ++c) {
        const Vec va = simd::bit_cast<Vec>(_mm256_i32gather_ps(source + c * stride, first_index, 4));
        const Vec vb = simd::bit_cast<Vec>(_mm256_i32gather_ps(source + c * stride, second_index, 4));
        const Vec value = wa * va + wb * vb;
        std::memcpy(o + c * kStep, &value, sizeof value);
      }
    }
#else
    const int32_t* first = &plan.column_first[x];
    const int32_t* second = &plan.column_second[x];
    for (int32_t c = 0; c < io.classes; ++c) {
      const float* in = source + c * stride;
      Vec va, vb;
      for (int lane = 0; lane < kLanes; ++lane) {
        va[lane] = in[first[lane]];
        vb[lane] = in[second[lane]];
      }
      const Vec value = wa * va + wb * vb;
      std::memcpy(o + c * kStep, &value, sizeof value);
    }
#endif
  }
}

// max(value, best) as `value > best ? value : best`: best when value is NaN (x86's max does
// exactly that in one instruction).
inline Vec running_max(const Vec& value, const Vec& best) {
#if defined(__AVX__)
  return simd::bit_cast<Vec>(_mm256_max_ps(simd::bit_cast<__m256>(value), simd::bit_cast<__m256>(best)));
#elif defined(__SSE__)
  return simd::bit_cast<Vec>(_mm_max_ps(simd::bit_cast<__m128>(value), simd::bit_cast<__m128>(best)));
#else
  return value > best ? value : best;
#endif
}

// The first `count` (<= kStep) labels of a block.
template <typename Label>
void store_labels(Label* out, const IntVec (&labels)[kUnroll], int32_t count) {
#if defined(__AVX2__)
  if constexpr (sizeof(Label) == 1 && kUnroll == 2) {
    if (count == kStep) {  // labels < 256: pack to uint16, restore the order, pack to uint8
      const __m256i words = _mm256_permute4x64_epi64(
          _mm256_packus_epi32(simd::bit_cast<__m256i>(labels[0]), simd::bit_cast<__m256i>(labels[1])), 0xd8);
      const __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), bytes);
      return;
    }
  }
#endif
  if constexpr (sizeof(Label) == sizeof(int32_t)) {
    if (count == kStep) {
      std::memcpy(out, labels, sizeof labels);
      return;
    }
  }
  for (int32_t i = 0; i < count; ++i) out[i] = Label(labels[i / kLanes][i % kLanes]);
}

// Labels of one output row's tile: for kStep pixels at a time, the vertical blend of the two
// column-interpolated rows per class and a running maximum (the first maximum wins; NaN never
// does, as `value > best` is false for it).
template <typename Label>
void argmax_row(const float* upper, const float* lower, float upper_weight, float lower_weight, int32_t classes,
                int32_t columns, Label* out) {
  const Vec wu = upper_weight - Vec{};
  const Vec wl = lower_weight - Vec{};
  const int64_t block_floats = int64_t(classes) * kStep;
  for (int32_t x = 0; x < columns; x += kStep) {
    Vec best[kUnroll];
    IntVec label[kUnroll];
    for (int u = 0; u < kUnroll; ++u) {
      best[u] = -std::numeric_limits<float>::infinity() - Vec{};
      label[u] = IntVec{};
    }
    const float* up = upper + x / kStep * block_floats;
    const float* low = lower + x / kStep * block_floats;
    IntVec class_id{};
    for (int32_t c = 0; c < classes; ++c) {
      for (int u = 0; u < kUnroll; ++u) {
        Vec a, b;
        std::memcpy(&a, up + u * kLanes, sizeof a);
        std::memcpy(&b, low + u * kLanes, sizeof b);
        const Vec value = wu * a + wl * b;
        const IntVec greater = value > best[u];
        best[u] = running_max(value, best[u]);
        label[u] = greater ? class_id : label[u];
      }
      class_id += 1;
      up += kStep;
      low += kStep;
    }
    store_labels(out + x, label, std::min(kStep, columns - x));
  }
}

// One band of output rows of one image, tile by tile. Two column-interpolated rows are kept,
// each tagged with its source row; rows are monotonic in y, so the one not needed next is the
// one to replace.
Error run_band(const Plan& plan, int32_t image, int32_t band) {
  const sd_upsample_argmax_io& io = plan.io;
  const int64_t row_floats = int64_t(io.classes) * plan.tile_width;
  thread_local Scratch scratch;
  float* memory = scratch.reserve(size_t(2 * row_floats + io.classes * source_stride(io)));
  if (memory == nullptr) return out_of_host_memory();
  float* slots[2] = {memory, memory + row_floats};
  float* source = memory + 2 * row_floats;
  const int32_t y_begin = band * plan.band_height;
  const int32_t y_end = std::min(io.out_height, y_begin + plan.band_height);
  for (int32_t tile = 0; tile < plan.tiles; ++tile) {
    const int32_t x0 = tile * plan.tile_width;
    const int32_t columns = std::min(plan.tile_width, io.out_width - x0);
    int32_t held[2] = {-1, -1};
    const auto interpolated = [&](int32_t row, int32_t keep) -> const float* {
      for (int s = 0; s < 2; ++s)
        if (held[s] == row) return slots[s];
      const int s = held[0] == keep ? 1 : 0;
      load_source_rows(io, image, row, source);
      interpolate_columns(plan, x0, source, slots[s]);
      held[s] = row;
      return slots[s];
    };
    for (int32_t y = y_begin; y < y_end; ++y) {
      const LinearTap tap = plan.rows[size_t(y)];
      const float* upper = interpolated(tap.first, tap.second);
      const float* lower = interpolated(tap.second, tap.first);
      const int64_t offset = (int64_t(image) * io.out_height + y) * io.out_width + x0;
      if (io.labels_dtype == SD_LABELS_UINT8)
        argmax_row(upper, lower, tap.first_weight, tap.second_weight, io.classes, columns,
                   static_cast<uint8_t*>(io.labels) + offset);
      else
        argmax_row(upper, lower, tap.first_weight, tap.second_weight, io.classes, columns,
                   static_cast<int32_t*>(io.labels) + offset);
    }
  }
  return {};
}

}  // namespace

Error run_cpu(const sd_upsample_argmax_io& io, int threads) {
  // Columns are padded to whole blocks and indexed with int32.
  if (io.out_width > std::numeric_limits<int32_t>::max() - kStep)
    return invalid("out_width must be below 2^31 - ", kStep, ", got ", io.out_width);
  const Plan plan(io, threads);
  const int64_t tasks = int64_t(io.batch) * plan.bands;
  ThreadPool pool(int(std::min<int64_t>(threads, tasks)));
  std::atomic<bool> out_of_memory{false};
  pool.parallel_for(
      tasks,
      [&](int64_t task) {
        if (run_band(plan, int32_t(task / plan.bands), int32_t(task % plan.bands)))
          out_of_memory.store(true, std::memory_order_relaxed);
      },
      1);
  if (out_of_memory.load()) return out_of_host_memory();
  return {};
}

}  // namespace segdeploy::head::SD_CPU_VARIANT
