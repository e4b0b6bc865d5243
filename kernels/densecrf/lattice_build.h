// Construction of a permutohedral lattice as a sequence of data-parallel steps, each a function
// of one index that the CPU driver runs in an OpenMP loop and the CUDA driver in a kernel.
//
// Every (pixel, simplex vertex) pair is an "entry" with a key (D lattice coordinates) and a
// barycentric weight. Entries with the same key form one lattice vertex. Vertices are numbered in
// the order of their first entry (as in the densecrf reference, which gives memory locality), and
// every sum over a vertex's entries runs in entry order, so the results do not depend on thread
// timing even though the hash table is filled concurrently.
#ifndef SEGDEPLOY_DENSECRF_LATTICE_BUILD_H
#define SEGDEPLOY_DENSECRF_LATTICE_BUILD_H

#include <cstdint>

#include "lattice_point.h"

namespace segdeploy::densecrf {

constexpr int32_t kEmptySlot = -1;

// Relaxed atomics on plain int32 arrays, for the host (GCC/Clang builtins) and the device.
SD_HOST_DEVICE int32_t atomic_load(const int32_t* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const volatile int32_t*>(p);
#else
  return __atomic_load_n(p, __ATOMIC_RELAXED);
#endif
}
// Returns the value found; the store happened when it equals `expected`.
SD_HOST_DEVICE int32_t atomic_compare_swap(int32_t* p, int32_t expected, int32_t desired) {
#if defined(__CUDA_ARCH__)
  return atomicCAS(p, expected, desired);
#else
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return expected;
#endif
}
SD_HOST_DEVICE void atomic_min(int32_t* p, int32_t value) {
#if defined(__CUDA_ARCH__)
  atomicMin(p, value);
#else
  int32_t current = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (value < current &&
         !__atomic_compare_exchange_n(p, &current, value, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
#endif
}
SD_HOST_DEVICE int32_t atomic_fetch_add(int32_t* p, int32_t value) {
#if defined(__CUDA_ARCH__)
  return atomicAdd(p, value);
#else
  return __atomic_fetch_add(p, value, __ATOMIC_RELAXED);
#endif
}

// Hash table capacity: a power of two with at most half of it ever filled.
inline uint32_t table_size_for(int64_t entries) {
  uint32_t size = 1;
  while (size < 2 * entries) size <<= 1;
  return size;
}

// Raw arrays of one lattice (host or device memory); `entries` bounds the vertex count too.
template <int D>
struct LatticeArrays {
  static constexpr int kVertices = D + 1;  // entries per pixel
  int32_t pixels = 0;
  int32_t entries = 0;
  uint32_t table_mask = 0;
  int32_t* keys = nullptr;           // [entries][D]
  float* barycentric = nullptr;      // [entries]
  int32_t* table = nullptr;          // [table_mask + 1]: smallest entry with the slot's key, then its vertex
  uint32_t* table_hash = nullptr;    // [table_mask + 1]: hash of the slot's key, checked before the key
  int32_t* table_fill = nullptr;     // [1] slots claimed, or NULL for a table that cannot overflow
  int32_t max_fill = 0;              // with table_fill: claims allowed before the table must grow
  int32_t* entry_slot = nullptr;     // [entries]: slot of the entry's key
  int32_t* owner_rank = nullptr;     // [entries]: exclusive prefix sum of "entry owns its key"
  int32_t* entry_vertex = nullptr;   // [entries]
  int32_t* vertex_keys = nullptr;    // [entries][D]: key of each vertex
  int32_t* vertex_size = nullptr;    // [entries]: entries per vertex, later the fill cursor
  int32_t* segment_start = nullptr;  // [entries + 1]: entries of vertex v in [start[v], start[v+1])
  int32_t* segment_entry = nullptr;  // [entries]: entry ids grouped by vertex, ascending
  int32_t* neighbors = nullptr;      // [D+1][neighbor_stride][2]: vertex -/+ along each axis, or M if absent
  int32_t neighbor_stride = 0;       // >= M
  int32_t* vertex_count = nullptr;   // [1]: M, the number of vertices

  SD_HOST_DEVICE const int32_t* key(int32_t entry) const { return keys + int64_t(entry) * D; }
};

SD_HOST_DEVICE uint32_t mix_hash(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

template <int D>
SD_HOST_DEVICE uint32_t hash_key(const int32_t* key) {
  uint32_t h = 0;
  for (int k = 0; k < D; ++k) h = (h + static_cast<uint32_t>(key[k])) * 0x9e3779b1u;
  return mix_hash(h);
}

template <int D>
SD_HOST_DEVICE bool same_key(const int32_t* a, const int32_t* b) {
  for (int k = 0; k < D; ++k)
    if (a[k] != b[k]) return false;
  return true;
}

// Step 1 (per pixel): the pixel's D+1 entries from its feature vector.
template <int D>
SD_HOST_DEVICE void embed_pixel(const LatticeArrays<D>& L, int32_t pixel, const float* feature,
                                const LatticeScale<D>& scale) {
  const int64_t first = int64_t(pixel) * (D + 1);
  embed_point<D>(feature, scale, L.keys + first * D, L.barycentric + first);
}

// Step 2 (per entry): claims or finds the slot of the entry's key; the slot ends up holding the
// smallest entry with that key, whatever the order in which threads arrive. A table with a fill
// limit stops taking keys at the limit (each thread may claim one more), so it never fills up;
// the caller then rebuilds it larger.
template <int D>
SD_HOST_DEVICE void insert_entry(const LatticeArrays<D>& L, int32_t entry) {
  if (L.table_fill != nullptr && atomic_load(L.table_fill) >= L.max_fill) return;
  const int32_t* key = L.key(entry);
  const uint32_t hash = hash_key<D>(key);
  uint32_t slot = hash & L.table_mask;
  for (;;) {
    int32_t held = atomic_load(L.table + slot);
    if (held == kEmptySlot) {
      held = atomic_compare_swap(L.table + slot, kEmptySlot, entry);
      if (held == kEmptySlot) {
        L.table_hash[slot] = hash;  // read only after this step
        if (L.table_fill != nullptr) atomic_fetch_add(L.table_fill, 1);
        break;
      }
    }
    if (same_key<D>(L.key(held), key)) {
      atomic_min(L.table + slot, entry);
      break;
    }
    slot = (slot + 1) & L.table_mask;
  }
  L.entry_slot[entry] = static_cast<int32_t>(slot);
}

// Step 3 (per entry): 1 when the entry is the first with its key (the input of a prefix sum).
template <int D>
SD_HOST_DEVICE int32_t owns_key(const LatticeArrays<D>& L, int32_t entry) {
  return L.table[L.entry_slot[entry]] == entry ? 1 : 0;
}

// Step 4 (per entry, after the prefix sum into owner_rank): the entry's vertex, the vertex's key
// and the count of entries per vertex (vertex_size must be zero before).
template <int D>
SD_HOST_DEVICE void assign_vertex(const LatticeArrays<D>& L, int32_t entry) {
  const int32_t owner = L.table[L.entry_slot[entry]];
  const int32_t vertex = L.owner_rank[owner];
  L.entry_vertex[entry] = vertex;
  if (owner == entry)
    for (int k = 0; k < D; ++k) L.vertex_keys[int64_t(vertex) * D + k] = L.key(entry)[k];
  atomic_fetch_add(L.vertex_size + vertex, 1);
}

// Step 5 (per table slot, after step 4): the slot now names its vertex, for the lookups of step 8.
template <int D>
SD_HOST_DEVICE void relabel_slot(const LatticeArrays<D>& L, uint32_t slot) {
  const int32_t held = L.table[slot];
  if (held != kEmptySlot) L.table[slot] = L.owner_rank[held];
}

// Step 6 (per entry, after segment_start is the prefix sum of vertex_size and vertex_size is
// zeroed again): places the entry in its vertex's segment, in any order.
template <int D>
SD_HOST_DEVICE void place_in_segment(const LatticeArrays<D>& L, int32_t entry) {
  const int32_t vertex = L.entry_vertex[entry];
  L.segment_entry[L.segment_start[vertex] + atomic_fetch_add(L.vertex_size + vertex, 1)] = entry;
}

// Step 7 (per vertex): sorts the segment so that sums over it run in entry order. Segments are
// short (a few to a few dozen entries), so insertion sort it is.
template <int D>
SD_HOST_DEVICE void sort_segment(const LatticeArrays<D>& L, int32_t vertex) {
  int32_t* first = L.segment_entry + L.segment_start[vertex];
  const int32_t n = L.segment_start[vertex + 1] - L.segment_start[vertex];
  for (int32_t i = 1; i < n; ++i) {
    const int32_t value = first[i];
    int32_t j = i - 1;
    for (; j >= 0 && first[j] > value; --j) first[j + 1] = first[j];
    first[j + 1] = value;
  }
}

// Vertex holding `key` (after step 5), or M when the lattice has no such vertex.
template <int D>
SD_HOST_DEVICE int32_t find_vertex(const LatticeArrays<D>& L, const int32_t* key, int32_t vertex_count) {
  const uint32_t hash = hash_key<D>(key);
  uint32_t slot = hash & L.table_mask;
  for (;;) {
    const int32_t vertex = L.table[slot];
    if (vertex == kEmptySlot) return vertex_count;
    if (L.table_hash[slot] == hash && same_key<D>(L.vertex_keys + int64_t(vertex) * D, key)) return vertex;
    slot = (slot + 1) & L.table_mask;
  }
}

// Step 8 (per vertex and axis 0..D): the two neighbours along the axis that the blur reads.
template <int D>
SD_HOST_DEVICE void find_neighbors(const LatticeArrays<D>& L, int32_t vertex, int axis, int32_t vertex_count) {
  const int32_t* key = L.vertex_keys + int64_t(vertex) * D;
  // The two lattice points one step away along the axis (the blur is symmetric in them).
  int32_t lower[D], upper[D];
  for (int k = 0; k < D; ++k) {
    lower[k] = key[k] - 1;
    upper[k] = key[k] + 1;
  }
  if (axis < D) {  // the last axis is the implied coordinate: only the others move
    lower[axis] = key[axis] + D;
    upper[axis] = key[axis] - D;
  }
  int32_t* out = L.neighbors + (int64_t(axis) * L.neighbor_stride + vertex) * 2;
  out[0] = find_vertex<D>(L, lower, vertex_count);
  out[1] = find_vertex<D>(L, upper, vertex_count);
}

}  // namespace segdeploy::densecrf

#endif
