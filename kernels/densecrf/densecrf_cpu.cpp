// CPU driver of the dense CRF: threads over pixels and lattice vertices, SIMD over classes.
// Each pixel's or vertex's class values form one row, padded to a multiple of 8 floats.
//
// This file is compiled once per instruction set (SD_CPU_VARIANT names the namespace, see
// kernels/CMakeLists.txt); densecrf_cpu_dispatch.cpp picks the best one the CPU runs.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../src/simd.h"
#include "../src/status_internal.h"
#include "../src/thread_pool.h"
#include "crf_problem.h"
#include "densecrf_cpu.h"
#include "lattice_build.h"

namespace segdeploy::densecrf::SD_CPU_VARIANT {
namespace {

// SD_CRF_PROFILE=1 prints the time of each phase to stderr (for tuning).
struct PhaseTimer {
  bool on = std::getenv("SD_CRF_PROFILE") != nullptr;
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
  void operator()(const char* phase) {
    if (!on) return;
    const auto now = std::chrono::steady_clock::now();
    std::fprintf(stderr, "  %-24s %8.2f ms\n", phase, std::chrono::duration<double, std::milli>(now - last).count());
    last = now;
  }
};

// The hot loops are explicit SIMD through the vector types of GCC and Clang: a Block is one
// native register (SSE/NEON: 4 floats, AVX: 8; src/simd.h), and rows hold whole Blocks on every target.
constexpr int kBlockLanes = simd::kLanes;
constexpr int kRowMultiple = 8;
using Block = simd::Floats;
using IntBlock = simd::Ints;

constexpr size_t kHugePage = size_t(2) << 20;
constexpr std::align_val_t kRowAlignment{32};

// Large arrays are aligned for Blocks and, from 2 MiB on, backed by huge pages where the OS
// offers them: the lattice is read at random, and 4 KiB pages thrash the TLB.
// Returns NULL when out of memory.
void* allocate_large(size_t bytes) {
  if (bytes < kHugePage) return ::operator new[](bytes, kRowAlignment, std::nothrow);
  bytes = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* memory = ::operator new[](bytes, std::align_val_t(kHugePage), std::nothrow);
#if defined(__linux__)
  if (memory != nullptr) madvise(memory, bytes, MADV_HUGEPAGE);  // advice: a refusal changes nothing
#endif
  return memory;
}

void release_large(void* memory, size_t bytes) {
  ::operator delete[](memory, bytes < kHugePage ? kRowAlignment : std::align_val_t(kHugePage));
}

// An uninitialised heap array that only grows: the scratch memory of one thread's calls.
// reserve() returns NULL when out of memory (SD_RESERVE turns that into an error).
template <typename T>
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { release(); }

  T* reserve(size_t count) {
    if (count > size_) {
      release();
      data_ = static_cast<T*>(allocate_large(count * sizeof(T)));
      size_ = data_ != nullptr ? count : 0;
    }
    return data_;
  }
  T* get() const { return data_; }

 private:
  void release() {
    if (data_ != nullptr) release_large(data_, size_ * sizeof(T));
    data_ = nullptr;
    size_ = 0;
  }
  T* data_ = nullptr;
  size_t size_ = 0;
};

#define SD_RESERVE(pointer, buffer, count)                                   \
  do {                                                                      \
    if (((pointer) = (buffer).reserve(count)) == nullptr) return out_of_host_memory(); \
  } while (0)

int64_t exclusive_scan(int32_t* values, int64_t count) {
  int64_t total = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int32_t value = values[i];
    values[i] = int32_t(total);
    total += value;
  }
  return total;
}

// Rows are read at addresses known a few iterations ahead: prefetching them turns memory latency
// into bandwidth. kPrefetchAhead is in rows.
constexpr int kPrefetchAhead = 12;
// One prefetch per cache line of a row that starts on a line (value_stride pads lattice rows so
// that they do, and large arrays are line-aligned): one for a float16 row of up to 32 classes.
inline void prefetch_bytes(const void* row, size_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (size_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(p + offset);
}

// Lattice values (the splatted and blurred class rows) are stored as float16 where the CPU
// converts in hardware (F16C): that halves the memory traffic of the splat, blur and slice,
// which are bound by it; the arithmetic stays float32. Rows hold `blocks` Blocks and are padded
// to a power-of-two number of bytes up to a cache line (21 classes: 24 values in 64 bytes), so
// that a row never straddles two cache lines.
#if defined(__F16C__) && defined(__AVX__)
typedef uint16_t Value;
inline Block load_block(const Value* p) {
  return simd::bit_cast<Block>(_mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p))));
}
inline void store_block(Value* p, Block b) {
  _mm_store_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(simd::bit_cast<__m256>(b), _MM_FROUND_TO_NEAREST_INT));
}
#else
typedef float Value;
inline Block load_block(const Value* p) { return *reinterpret_cast<const Block*>(p); }
inline void store_block(Value* p, Block b) { *reinterpret_cast<Block*>(p) = b; }
#endif
inline int value_stride(int blocks) {  // in Values
  const int block_bytes = kBlockLanes * int(sizeof(Value));
  int row_blocks = 1;
  while (row_blocks < blocks && row_blocks * block_bytes < 64) row_blocks *= 2;
  if (row_blocks < blocks) row_blocks = (blocks * block_bytes + 63) / 64 * 64 / block_bytes;
  return row_blocks * kBlockLanes;
}

inline Block broadcast(float value) { return Block{} + value; }

inline Block max(Block a, Block b) { return a > b ? a : b; }

// Every lane of the result holds the maximum (sum) of b's lanes: a tree of lane swaps, whose
// short dependency chain matters in the softmax, which runs once per pixel and iteration.
#if defined(__AVX__)
inline Block swap_lanes(Block b, int distance) {
  switch (distance) {
    case 4: return simd::shuffle<4, 5, 6, 7, 0, 1, 2, 3>(b, b);
    case 2: return simd::shuffle<2, 3, 0, 1, 6, 7, 4, 5>(b, b);
    default: return simd::shuffle<1, 0, 3, 2, 5, 4, 7, 6>(b, b);
  }
}
#else
inline Block swap_lanes(Block b, int distance) {
  return distance == 2 ? simd::shuffle<2, 3, 0, 1>(b, b) : simd::shuffle<1, 0, 3, 2>(b, b);
}
#endif
inline Block all_lanes_max(Block b) {
  for (int distance = kBlockLanes / 2; distance > 0; distance /= 2) b = max(b, swap_lanes(b, distance));
  return b;
}
inline Block all_lanes_sum(Block b) {
  for (int distance = kBlockLanes / 2; distance > 0; distance /= 2) b += swap_lanes(b, distance);
  return b;
}

// exp(x) for x <= 0 within 2 ulp (Cephes' polynomial after a Cody-Waite reduction), exactly 0
// below -87 so that padding classes carry no mass (and make no subnormal floats, which are slow).
inline Block exp_nonpositive(Block x) {
  const Block low = broadcast(-87.0f);
  const Block clamped = x < low ? low : x;
  const Block shifter = broadcast(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const Block n = (clamped * 1.44269504088896341f + shifter) - shifter;
  const Block r = (clamped - n * 0.693359375f) + n * 2.12194440e-4f;
  Block p = broadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const IntBlock exponent = (__builtin_convertvector(n, IntBlock) + 127) << 23;
  const Block result = p * simd::bit_cast<Block>(exponent);
  return x < low ? Block{} : result;
}

// In-place softmax of kRows rows (padding holds kPaddingLogProb and comes out as 0). Rows done
// together interleave their dependency chains.
template <int kRows = 1>
inline void softmax_rows(Block* const (&rows)[kRows], int blocks) {
  Block shift[kRows], total[kRows] = {};
  for (int n = 0; n < kRows; ++n) {
    Block largest = rows[n][0];
    for (int b = 1; b < blocks; ++b) largest = max(largest, rows[n][b]);
    shift[n] = all_lanes_max(largest);
  }
  for (int b = 0; b < blocks; ++b)
    for (int n = 0; n < kRows; ++n) {
      rows[n][b] = exp_nonpositive(rows[n][b] - shift[n]);
      total[n] += rows[n][b];
    }
  for (int n = 0; n < kRows; ++n) {
    const Block inverse = 1.0f / all_lanes_sum(total[n]);
    for (int b = 0; b < blocks; ++b) rows[n][b] *= inverse;
  }
}
inline void softmax_row(Block* row, int blocks) { softmax_rows<1>({row}, blocks); }

// Calls body(std::integral_constant<int, K>(), first) over a row's Blocks in groups: K = 4 while
// four or more remain, then one group of the 1 to 3 left (21 classes: one group of 3). With K a
// constant the compiler keeps a group's sums in registers.
template <typename Body>
inline void for_each_block_group(int blocks, const Body& body) {
  int first = 0;
  for (; first + 4 <= blocks; first += 4) body(std::integral_constant<int, 4>(), first);
  switch (blocks - first) {
    case 1: body(std::integral_constant<int, 1>(), first); break;
    case 2: body(std::integral_constant<int, 2>(), first); break;
    case 3: body(std::integral_constant<int, 3>(), first); break;
    default: break;
  }
}

// One lattice with the weights that fold in the kernel's normalisation and Potts weight.
template <int D>
class CpuLattice {
 public:
  static constexpr int kVertices = D + 1;

  // feature_of(pixel, float* feature) writes the pixel's D features.
  // `alongside()` (work for one thread) runs while one step of the build takes a single thread.
  template <typename FeatureOf, typename Alongside>
  Error build(int32_t pixels, const FeatureOf& feature_of, ThreadPool& pool, const Alongside& alongside) {
    LatticeArrays<D>& L = L_;
    L.pixels = pixels;
    L.entries = pixels * kVertices;
    const size_t entries = size_t(L.entries);
    SD_RESERVE(L.keys, keys_, entries * D);
    SD_RESERVE(L.barycentric, barycentric_, entries);
    SD_RESERVE(L.entry_vertex, entry_vertex_, entries);
    // Every entry could open a vertex: the vertex arrays are sized for that.
    SD_RESERVE(L.vertex_keys, vertex_keys_, entries * D);
    SD_RESERVE(L.vertex_size, vertex_size_, entries);
    SD_RESERVE(entry_hash_all_, entry_hash_, entries);

    PhaseTimer timer;
    const LatticeScale<D> scale;
    pool.parallel_for(pixels, [&](int64_t pixel) {
      float feature[D];
      feature_of(pixel, feature);
      embed_pixel<D>(L, int32_t(pixel), feature, scale);
      // The keys' hashes here, in parallel, take them off the sequential numbering's path.
      for (int64_t entry = pixel * kVertices; entry < (pixel + 1) * kVertices; ++entry)
        entry_hash_all_[entry] = hash_key<D>(L.key(int32_t(entry)));
    });
    timer("embed");
    // Numbering the vertices is sequential: another thread meanwhile runs `alongside`.
    Error numbered;
    pool.parallel_for(2, [&](int64_t task) {
      if (task == 0) numbered = number_vertices();
      else alongside();
    }, 1);
    SD_RETURN_IF_ERROR(numbered);
    timer("insert, segments");
    const int32_t vertices = vertex_count_;

    // Only the upper neighbour along each axis is looked up: the lower one of a vertex is the
    // vertex whose upper neighbour it is.
    SD_RESERVE(upper_all_, upper_, size_t(vertices) * kVertices);
    // The table is read at random: the slots of a vertex kLookAhead further on are requested
    // while this one's are probed, so that more misses overlap than one vertex's D+1.
    constexpr int64_t kLookAhead = 4;
    pool.parallel_for(vertices, [&](int64_t v) {
      if (v + kLookAhead < vertices) {
        const int32_t* key = L.vertex_key(int32_t(v + kLookAhead));
        for (int axis = 0; axis < kVertices; ++axis) {
          int32_t around[D];
          neighbor_key<D>(key, axis, 1, around);
          prefetch(L.table + (hash_key<D>(around) & L.table_mask));
        }
      }
      LatticeStep steps[kVertices];
      for (int axis = 0; axis < kVertices; ++axis) steps[axis] = {axis, 1};
      int32_t found[kVertices];
      look_up_neighbors<D>(L, int32_t(v), vertices, steps, found);
      for (int axis = 0; axis < kVertices; ++axis) upper_all_[int64_t(axis) * vertices + v] = found[axis];
    }, 256);
    timer("neighbors");
    SD_RETURN_IF_ERROR(build_chains(pool));
    timer("chains");
    if (timer.on) std::fprintf(stderr, "  D=%d pixels=%d vertices=%d\n", D, pixels, vertices);
    return {};
  }

  // Numbers the vertices (below), then lists the entries of each vertex, in a single thread.
  Error number_vertices() {
    LatticeArrays<D>& L = L_;
    // A small table stays in cache. Lattices of images rarely have more vertices than pixels
    // (the densecrf reference makes the same guess); the table grows when they do.
    SD_RETURN_IF_ERROR(resize_table(table_size_for(2 * int64_t(L.pixels)), 0));
    const int32_t vertices = insert_entries();
    if (vertices < 0) return out_of_host_memory();
    vertex_count_ = vertices;
    L.vertex_count = &vertex_count_;

    SD_RESERVE(L.segment_start, segment_start_, size_t(vertices) + 1);
    std::copy(L.vertex_size, L.vertex_size + vertices, L.segment_start);
    L.segment_start[vertices] = int32_t(exclusive_scan(L.segment_start, vertices));
    SD_RESERVE(L.segment_entry, segment_entry_, size_t(L.entries));
    // Entries grouped by vertex in one pass in entry order, so every group comes out sorted.
    int32_t* cursor = L.vertex_size;
    std::copy(L.segment_start, L.segment_start + vertices, cursor);
    for (int32_t entry = 0; entry < L.entries; ++entry) L.segment_entry[cursor[L.entry_vertex[entry]]++] = entry;
    return {};
  }

  // Numbers the entries' keys in a single thread, in entry order: a vertex's number is the rank
  // of its first entry among first entries, as the parallel steps of lattice_build.h give on the
  // GPU, without their atomics (which cost more than they save on a few cores). Returns the
  // vertex count, or -1 when the table cannot grow.
  int32_t insert_entries() {
    LatticeArrays<D>& L = L_;
    int32_t vertices = 0;
    constexpr int kAhead = 8;  // entries: the next slots are fetched while this one is probed
    for (int32_t entry = 0; entry < L.entries; ++entry) {
      if (entry + kAhead < L.entries) prefetch(L.table + (entry_hash_all_[entry + kAhead] & L.table_mask));
      const int32_t* key = L.key(entry);
      const uint32_t hash = entry_hash_all_[entry];
      uint32_t slot = hash & L.table_mask;
      while (L.table[slot].held != kEmptySlot &&
             !(L.table[slot].hash == hash && same_key<D>(L.vertex_key(L.table[slot].held), key)))
        slot = (slot + 1) & L.table_mask;
      int32_t vertex = L.table[slot].held;
      if (vertex == kEmptySlot) {
        vertex = vertices++;
        L.table[slot] = TableSlot{vertex, hash};
        std::copy(key, key + D, L.vertex_keys + int64_t(vertex) * D);
        L.vertex_size[vertex] = 0;
        if (uint32_t(vertices) > L.table_mask / 2 && resize_table(2 * (L.table_mask + 1), vertices)) return -1;
      }
      L.entry_vertex[entry] = vertex;
      ++L.vertex_size[vertex];
    }
    return vertices;
  }

  // An empty table of `size` slots holding the first `vertices` vertices.
  Error resize_table(uint32_t size, int32_t vertices) {
    LatticeArrays<D>& L = L_;
    if (size == 0) return out_of_host_memory();  // the size wrapped around
    SD_RESERVE(L.table, table_, size);
    L.table_mask = size - 1;
    std::fill(L.table, L.table + size, TableSlot{kEmptySlot, 0});
    for (int32_t v = 0; v < vertices; ++v) {
      const uint32_t hash = hash_key<D>(L.vertex_key(v));
      uint32_t slot = hash & L.table_mask;
      while (L.table[slot].held != kEmptySlot) slot = (slot + 1) & L.table_mask;
      L.table[slot] = TableSlot{v, hash};
    }
    return {};
  }

  // Row sums of the lattice kernel, then the splat weights (barycentric × pre) in segment order
  // and the slice weights (barycentric × scale × post × Potts weight) in entry order.
  Error compute_weights(float potts_weight, int32_t normalization, ThreadPool& pool) {
    const LatticeArrays<D>& L = L_;
    float* splat_weight;
    int32_t* splat_pixel;
    float* pre;
    float* slice_weight;
    float* row_sum;
    SD_RESERVE(splat_weight, splat_weight_, size_t(L.entries));
    SD_RESERVE(splat_pixel, splat_pixel_, size_t(L.entries));
    SD_RESERVE(pre, pixel_scratch_, size_t(L.pixels) * 2);
    SD_RESERVE(slice_weight, slice_weight_, size_t(L.entries));
    SD_RESERVE(row_sum, row_sum_, size_t(vertex_count_));
    pool.parallel_for(L.entries, [&](int64_t k) {
      const int32_t entry = L.segment_entry[k];
      splat_weight[k] = L.barycentric[entry];
      splat_pixel[k] = entry / kVertices;
    });
    // The kernel applied to an image of ones: splatting ones sums the barycentric weights.
    pool.parallel_for(vertex_count_, [&](int64_t v) {
      float sum = 0.0f;
      for (int32_t k = L.segment_start[v]; k < L.segment_start[v + 1]; ++k) sum += splat_weight[k];
      row_sum[v] = sum;
    });
    blur_chains(SumRows{row_sum}, pool);
    float* post = pre + L.pixels;
    const float scale = slice_scale<D>();
    pool.parallel_for(L.pixels, [&](int64_t pixel) {
      float sum = 0.0f;
      for (int r = 0; r < kVertices; ++r) {
        const int64_t entry = pixel * kVertices + r;
        sum += L.barycentric[entry] * row_sum[L.entry_vertex[entry]] * scale;
      }
      normalization_factors(sum, normalization, pre + pixel, post + pixel);
    });
    pool.parallel_for(L.entries, [&](int64_t k) { splat_weight[k] *= pre[splat_pixel[k]]; });
    pool.parallel_for(L.entries, [&](int64_t entry) {
      slice_weight[entry] = L.barycentric[entry] * scale * post[entry / kVertices] * potts_weight;
    });
    return {};
  }

  // values[v] = Σ over the vertex's entries of splat weight × q[pixel], for q rows of `blocks`
  // Blocks, into rows of value_stride(blocks).
  Error splat(const float* q, int blocks, ThreadPool& pool) {
    const LatticeArrays<D>& L = L_;
    const size_t rows = size_t(vertex_count_);
    const float* splat_weight = splat_weight_.get();
    const int32_t* splat_pixel = splat_pixel_.get();
    const int width = blocks * kBlockLanes;
    const int stride = value_stride(blocks);
    Value* values;
    SD_RESERVE(values, class_values_, rows * stride);
    pool.parallel_for(vertex_count_, [&](int64_t v) {
      for_each_block_group(blocks, [&](auto group, int first) {
        constexpr int kCount = decltype(group)::value;
        Block sum[kCount] = {};
        // No software prefetch: the pixels of consecutive vertices are close, and the hardware's
        // prefetcher follows them better (a prefetch per entry measured 1.5x slower).
        for (int32_t k = L.segment_start[v]; k < L.segment_start[v + 1]; ++k) {
          const float w = splat_weight[k];
          const Block* __restrict in = reinterpret_cast<const Block*>(q + int64_t(splat_pixel[k]) * width) + first;
          for (int b = 0; b < kCount; ++b) sum[b] += w * in[b];
        }
        Value* out = values + v * stride + first * kBlockLanes;
        for (int b = 0; b < kCount; ++b) store_block(out + b * kBlockLanes, sum[b]);
      });
    });
    return {};
  }

  // The blur along one axis couples each vertex with its two neighbours along it, so the
  // vertices fall into chains, one per line of the lattice in that direction. They are
  // listed once per lattice; the blur then walks each chain in place, carrying the old values of
  // the previous vertex in registers, and never touches a vertex without neighbours along the
  // axis (a fifth to a third of them on photos). That reads and writes each row once per axis
  // where a ping-pong pass over all vertices reads three rows and writes one.
  Error build_chains(ThreadPool& pool) {
    const int32_t vertices = vertex_count_;
    const int64_t max_chains = vertices / 2 + 1;  // a chain has two or more vertices
    uint8_t* has_lower_all;
    SD_RESERVE(chain_vertex_all_, chain_vertex_, size_t(vertices) * kVertices);
    SD_RESERVE(chain_start_all_, chain_start_, size_t(max_chains + 1) * kVertices);
    SD_RESERVE(has_lower_all, has_lower_, size_t(vertices) * kVertices);
    pool.parallel_for(kVertices, [&](int64_t axis) {
      const int32_t* upper = upper_all_ + axis * vertices;
      uint8_t* has_lower = has_lower_all + axis * vertices;
      int32_t* chain_vertex = chain_vertex_all_ + axis * vertices;
      int32_t* chain_start = chain_start_all_ + axis * (max_chains + 1);
      std::fill(has_lower, has_lower + vertices, uint8_t{0});
      for (int32_t v = 0; v < vertices; ++v)
        if (upper[v] != vertices) has_lower[upper[v]] = 1;
      int32_t length = 0, chains = 0;
      for (int32_t head = 0; head < vertices; ++head) {
        if (has_lower[head] || upper[head] == vertices) continue;
        chain_start[chains++] = length;
        for (int32_t v = head; v != vertices; v = upper[v]) chain_vertex[length++] = v;
      }
      chain_start[chains] = length;
      chain_count_[axis] = chains;
    }, 1);
    return {};
  }

  // The D+1 blur passes over rows of values, in place: each vertex becomes
  // itself + (lower + upper) / 2 with the values before the pass. `Rows` reads and writes one
  // vertex's row as a `Rows::Row` (zero for an absent neighbour) and prefetches it.
  template <typename Rows>
  void blur_chains(const Rows& rows, ThreadPool& pool) const {
    using Row = typename Rows::Row;
    const int64_t max_chains = vertex_count_ / 2 + 1;
    for (int axis = 0; axis < kVertices; ++axis) {
      const int32_t* chain_vertex = chain_vertex_all_ + int64_t(axis) * vertex_count_;
      const int32_t* chain_start = chain_start_all_ + axis * (max_chains + 1);
      const int32_t last = chain_start[chain_count_[axis]] - 1;
      pool.parallel_for(chain_count_[axis], [&](int64_t chain) {
        const int32_t end = chain_start[chain + 1];
        Row previous{}, current = rows.load(chain_vertex[chain_start[chain]]);
        for (int32_t i = chain_start[chain]; i < end; ++i) {
          rows.prefetch(chain_vertex[std::min(i + kPrefetchAhead, last)]);
          const Row next = i + 1 < end ? rows.load(chain_vertex[i + 1]) : Row{};
          rows.store(chain_vertex[i], current, Rows::blurred(current, previous, next));
          previous = current;
          current = next;
        }
      }, 256);
    }
  }

  // Row sums: float rows of 1.
  struct SumRows {
    struct Row {
      float value = 0.0f;
    };
    float* values;
    Row load(int32_t v) const { return {values[v]}; }
    void prefetch(int32_t v) const { __builtin_prefetch(values + v); }
    void store(int32_t v, const Row&, const Row& row) const { values[v] = row.value; }
    static Row blurred(const Row& self, const Row& lower, const Row& upper) {
      return {self.value + 0.5f * (lower.value + upper.value)};
    }
  };

  // Class rows: Value rows of value_stride(blocks), blurred in groups of kCount Blocks.
  template <int kCount>
  struct ClassRows {
    struct Row {
      Block block[kCount] = {};
    };
    Value* values;  // at the group's first class
    int stride;
    Row load(int32_t v) const {
      Row row;
      const Value* in = values + int64_t(v) * stride;
      for (int b = 0; b < kCount; ++b) row.block[b] = load_block(in + b * kBlockLanes);
      return row;
    }
    void prefetch(int32_t v) const { prefetch_bytes(values + int64_t(v) * stride, kCount * kBlockLanes * sizeof(Value)); }
    void store(int32_t v, const Row&, const Row& row) const {
      Value* out = values + int64_t(v) * stride;
      for (int b = 0; b < kCount; ++b) store_block(out + b * kBlockLanes, row.block[b]);
    }
    static Row blurred(const Row& self, const Row& lower, const Row& upper) {
      Row row;
      for (int b = 0; b < kCount; ++b) row.block[b] = self.block[b] + 0.5f * (lower.block[b] + upper.block[b]);
      return row;
    }
  };
  const Value* blur(int blocks, ThreadPool& pool) {
    Value* values = class_values_.get();
    const int stride = value_stride(blocks);
    for_each_block_group(blocks, [&](auto group, int first) {
      blur_chains(ClassRows<decltype(group)::value>{values + first * kBlockLanes, stride}, pool);
    });
    return values;
  }

  // Adds Σ_r slice weight × blurred[vertex] over the pixel's entries to `row`, which has kBlocks
  // Blocks (0: `blocks`, known only at run time; a constant lets the sums stay in registers).
  template <int kBlocks>
  void add_message(int64_t pixel, const Value* blurred, int blocks, Block* __restrict row) const {
    const int count = kBlocks > 0 ? kBlocks : blocks;
    const int stride = value_stride(count);
    const int64_t ahead = std::min<int64_t>(pixel + (kPrefetchAhead + D) / kVertices, L_.pixels - 1);
    for (int r = 0; r < kVertices; ++r)
      prefetch_bytes(blurred + int64_t(L_.entry_vertex[ahead * kVertices + r]) * stride,
                     count * kBlockLanes * sizeof(Value));
    const float* slice_weight = slice_weight_.get() + pixel * kVertices;
    const int32_t* entry_vertex = L_.entry_vertex + pixel * kVertices;
    for (int r = 0; r < kVertices; ++r) {
      const float w = slice_weight[r];
      const Value* in = blurred + int64_t(entry_vertex[r]) * stride;
      for (int b = 0; b < count; ++b) row[b] += w * load_block(in + b * kBlockLanes);
    }
  }

 private:
  LatticeArrays<D> L_;
  int32_t vertex_count_ = 0;
  int32_t chain_count_[kVertices] = {};
  int32_t* upper_all_ = nullptr;         // [D+1][vertices]: the upper neighbour along each axis, or M
  int32_t* chain_vertex_all_ = nullptr;  // [D+1][vertices]: each axis's chains, one after another
  int32_t* chain_start_all_ = nullptr;   // [D+1][vertices / 2 + 2]: where each chain starts
  Buffer<TableSlot> table_;
  uint32_t* entry_hash_all_ = nullptr;   // [entries]: hash_key of each entry's key
  Buffer<uint32_t> entry_hash_;
  Buffer<int32_t> keys_, entry_vertex_, vertex_keys_, vertex_size_,
      segment_start_, segment_entry_, upper_, chain_vertex_, chain_start_, splat_pixel_;
  Buffer<uint8_t> has_lower_;
  Buffer<float> barycentric_, splat_weight_, slice_weight_, pixel_scratch_, row_sum_;
  Buffer<Value> class_values_;
};

// Memory of a thread's calls, kept for its next call (sizes rarely change between calls, and
// fresh pages cost as much as a few iterations); freed when the thread ends. The spatial lattice
// depends only on the image size and the spatial parameters: it is reused while they stay.
struct SpatialKey {
  int32_t height = 0, width = 0, normalization = 0;
  float theta = 0.0f, weight = 0.0f;
  bool operator==(const SpatialKey& o) const {
    return height == o.height && width == o.width && normalization == o.normalization && theta == o.theta &&
           weight == o.weight;
  }
};

struct Scratch {
  Buffer<float> log_prob, q;
  CpuLattice<kSpatialDims> spatial;
  SpatialKey spatial_key;  // what `spatial` was built for; height 0: nothing
  CpuLattice<kBilateralDims> bilateral;
};

// Reads one image's unary into log-probability rows; throws on a non-finite (or negative
// probability) value, naming its position.
Error load_log_prob(const sd_crf_io& io, int32_t image, float* log_prob, int width, ThreadPool& pool) {
  const int64_t pixels = pixel_count(io);
  const int64_t base = int64_t(image) * io.classes * pixels;
  constexpr int64_t kTile = 256;  // pixels per tile: the transposition stays in cache
  std::atomic<int64_t> first_bad{INT64_MAX};
  pool.parallel_for(
      (pixels + kTile - 1) / kTile,
      [&](int64_t tile) {
        const int64_t begin = tile * kTile, end = std::min(pixels, begin + kTile);
        for (int32_t c = 0; c < io.classes; ++c) {
          for (int64_t i = begin; i < end; ++i) {
            const int64_t index = base + c * pixels + i;
            const float value = load_unary(io.unary, io.unary_dtype, index);
            if (!unary_value_ok(value, io.unary_kind)) {
              int64_t seen = first_bad.load();
              while (index < seen && !first_bad.compare_exchange_weak(seen, index)) {
              }
            }
            log_prob[i * width + c] = log_prob_from_unary(value, io.unary_kind);
          }
        }
        for (int64_t i = begin; i < end; ++i)
          std::fill(log_prob + i * width + io.classes, log_prob + (i + 1) * width, kPaddingLogProb);
      },
      4);
  if (first_bad == INT64_MAX) return {};
  const int64_t in_image = first_bad - base;
  const int64_t c = in_image / pixels, y = (in_image % pixels) / io.width, x = in_image % io.width;
  const float value = load_unary(io.unary, io.unary_dtype, first_bad);
  return invalid("unary[", image, ", ", c, ", ", y, ", ", x, "] is ", value, "; the unary must be finite",
                 io.unary_kind == SD_CRF_UNARY_PROBABILITIES ? " and >= 0 for probabilities" : "");
}

void write_outputs(const sd_crf_io& io, int32_t image, const float* q, int width, ThreadPool& pool) {
  const int64_t pixels = pixel_count(io);
  if (io.labels != nullptr) {
    int32_t* labels = io.labels + int64_t(image) * pixels;
    pool.parallel_for(pixels, [&](int64_t i) {
      const float* row = q + i * width;
      labels[i] = int32_t(std::max_element(row, row + io.classes) - row);
    });
  }
  if (io.probabilities != nullptr) {
    float* out = io.probabilities + int64_t(image) * io.classes * pixels;
    constexpr int64_t kTile = 256;
    pool.parallel_for(
        (pixels + kTile - 1) / kTile,
        [&](int64_t tile) {
          const int64_t begin = tile * kTile, end = std::min(pixels, begin + kTile);
          for (int32_t c = 0; c < io.classes; ++c)
            for (int64_t i = begin; i < end; ++i) out[c * pixels + i] = q[i * width + c];
        },
        4);
  }
}

Error run(const sd_crf_params& p, const sd_crf_io& io, ThreadPool& pool, Scratch& scratch) {
  const int64_t pixels = pixel_count(io);
  const int width = (io.classes + kRowMultiple - 1) / kRowMultiple * kRowMultiple;
  const int blocks = width / kBlockLanes;
  float* log_prob;
  float* q;
  SD_RESERVE(log_prob, scratch.log_prob, size_t(pixels) * width);
  SD_RESERVE(q, scratch.q, size_t(pixels) * width);
  Block* q_rows = reinterpret_cast<Block*>(q);
  const Block* log_prob_rows = reinterpret_cast<const Block*>(log_prob);

  // The spatial kernel depends on the image size only: one lattice serves the whole batch.
  CpuLattice<kSpatialDims>* spatial = spatial_active(p) ? &scratch.spatial : nullptr;
  const SpatialKey spatial_key{io.height, io.width, p.normalization, p.spatial_theta, p.spatial_weight};
  if (spatial && !(scratch.spatial_key == spatial_key)) {
    scratch.spatial_key = SpatialKey{};
    SD_RETURN_IF_ERROR(spatial->build(
        int32_t(pixels), [&](int64_t i, float* f) { spatial_features(int(i % io.width), int(i / io.width), p, f); },
        pool, [] {}));
    SD_RETURN_IF_ERROR(spatial->compute_weights(p.spatial_weight, p.normalization, pool));
    scratch.spatial_key = spatial_key;
  }
  CpuLattice<kBilateralDims>* bilateral = bilateral_active(p) ? &scratch.bilateral : nullptr;

  PhaseTimer timer;
  for (int32_t image = 0; image < io.batch; ++image) {
    // Reads the unary into log-probability rows and Q = softmax(them).
    Error loaded;
    const auto load = [&](ThreadPool& threads) {
      loaded = load_log_prob(io, image, log_prob, width, threads);
      threads.parallel_for(pixels, [&](int64_t i) {
        for (int b = 0; b < blocks; ++b) q_rows[i * blocks + b] = log_prob_rows[i * blocks + b];
        softmax_row(q_rows + i * blocks, blocks);
      });
    };
    if (bilateral) {
      const ImageView view{io.image + int64_t(image) * pixels * 3, io.image_layout, io.height, io.width};
      SD_RETURN_IF_ERROR(bilateral->build(
          int32_t(pixels),
          [&](int64_t i, float* f) { bilateral_features(int(i % io.width), int(i / io.width), view, p, f); },
          pool, [&] {
            ThreadPool one_thread(1);
            load(one_thread);
          }));
      SD_RETURN_IF_ERROR(loaded);
      timer.last = std::chrono::steady_clock::now();
      SD_RETURN_IF_ERROR(bilateral->compute_weights(p.bilateral_weight, p.normalization, pool));
      timer("bilateral weights");
    } else {
      load(pool);
      SD_RETURN_IF_ERROR(loaded);
    }
    for (int32_t iteration = 0; iteration < p.iterations; ++iteration) {
      const Value* spatial_blurred = nullptr;
      const Value* bilateral_blurred = nullptr;
      if (spatial) {
        SD_RETURN_IF_ERROR(spatial->splat(q, blocks, pool));
        timer("spatial splat");
        spatial_blurred = spatial->blur(blocks, pool);
        timer("spatial blur");
      }
      if (bilateral) {
        SD_RETURN_IF_ERROR(bilateral->splat(q, blocks, pool));
        timer("bilateral splat");
        bilateral_blurred = bilateral->blur(blocks, pool);
        timer("bilateral blur");
      }
      // Q = softmax(log_prob + messages); rows of up to 4 Blocks (32 classes) are summed in registers.
      const auto slice = [&](auto constant_blocks) {
        constexpr int kBlocks = decltype(constant_blocks)::value;
        const int count = kBlocks > 0 ? kBlocks : blocks;
        // kRows pixels from `first` together: their chains of loads, sums and softmax overlap.
        const auto slice_pixels = [&](int64_t first, auto constant_rows) {
          constexpr int kRows = decltype(constant_rows)::value;
          Block registers[kRows][kBlocks > 0 ? kBlocks : 1];
          Block* rows[kRows];
          for (int n = 0; n < kRows; ++n) {
            const int64_t i = first + n;
            rows[n] = kBlocks > 0 ? registers[n] : q_rows + i * blocks;
            // A loop, not std::copy: with `count` a constant it stays in registers (std::copy
            // of a run-time length is a call to memmove per pixel).
            for (int b = 0; b < count; ++b) rows[n][b] = log_prob_rows[i * blocks + b];
            if (spatial) spatial->add_message<kBlocks>(i, spatial_blurred, blocks, rows[n]);
            if (bilateral) bilateral->add_message<kBlocks>(i, bilateral_blurred, blocks, rows[n]);
          }
          softmax_rows<kRows>(rows, count);
          if (kBlocks > 0)
            for (int n = 0; n < kRows; ++n) std::copy(rows[n], rows[n] + count, q_rows + (first + n) * blocks);
        };
        pool.parallel_for(pixels / 2, [&](int64_t pair) { slice_pixels(2 * pair, std::integral_constant<int, 2>()); });
        if (pixels % 2 != 0) slice_pixels(pixels - 1, std::integral_constant<int, 1>());
      };
      switch (blocks) {
        case 1: slice(std::integral_constant<int, 1>()); break;
        case 2: slice(std::integral_constant<int, 2>()); break;
        case 3: slice(std::integral_constant<int, 3>()); break;
        case 4: slice(std::integral_constant<int, 4>()); break;
        default: slice(std::integral_constant<int, 0>()); break;
      }
      timer("slice+softmax");
    }
    write_outputs(io, image, q, width, pool);
    timer("write outputs");
  }
  return {};
}

}  // namespace

Error run_cpu(const sd_crf_params& params, const sd_crf_io& io, int threads) {
  thread_local Scratch scratch;
  ThreadPool pool(threads);
  return run(params, io, pool, scratch);
}

}  // namespace segdeploy::densecrf::SD_CPU_VARIANT
