// Construction of a permutohedral lattice as a sequence of data-parallel steps, each a function
// of one index that the CUDA driver runs in a kernel; the CPU driver shares the embedding, the
// hash table's layout and the neighbour lookups, and numbers the vertices in one sequential pass.
//
// Every (pixel, simplex vertex) pair is an "entry" with a key (D lattice coordinates) and a
// barycentric weight. Entries with the same key form one lattice vertex. Vertices are numbered in
// the order of their first entry (as in the densecrf reference, which gives memory locality), and
// each vertex's entries are then grouped in entry order (the drivers do that step: a sequential
// pass on the CPU, a stable sort by vertex on the GPU), so every sum over a vertex runs in entry
// order and the results do not depend on thread timing although the table fills concurrently.
#ifndef SEGDEPLOY_DENSECRF_LATTICE_BUILD_H
#define SEGDEPLOY_DENSECRF_LATTICE_BUILD_H

#include <cstdint>

#include "lattice_point.h"

namespace segdeploy::densecrf {

constexpr int32_t kEmptySlot = -1;

// One hash-table slot: the smallest entry holding the slot's key (then, after step 5, its vertex)
// and the key's hash, compared before the key itself. Both in one 8-byte slot: a probe touches
// one cache line.
struct TableSlot {
  int32_t held;
  uint32_t hash;
};

// A hint that `address` is about to be read (a no-op on the device).
SD_HOST_DEVICE void prefetch(const void* address) {
#if !defined(__CUDA_ARCH__)
  __builtin_prefetch(address);
#else
  (void)address;
#endif
}

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
  TableSlot* table = nullptr;        // [table_mask + 1]
  int32_t* entry_slot = nullptr;     // [entries]: slot of the entry's key
  int32_t* owner_rank = nullptr;     // [entries]: exclusive prefix sum of "entry owns its key"
  int32_t* entry_vertex = nullptr;   // [entries]
  int32_t* vertex_keys = nullptr;    // [entries][D]: key of each vertex
  int32_t* vertex_size = nullptr;    // [entries]: entries per vertex
  int32_t* segment_start = nullptr;  // [entries + 1]: entries of vertex v in [start[v], start[v+1])
  int32_t* segment_entry = nullptr;  // [entries]: entry ids grouped by vertex, ascending
  int32_t* neighbors = nullptr;      // [D+1][neighbor_stride][2]: vertex -/+ along each axis, or M if absent
  int32_t neighbor_stride = 0;       // >= M
  int32_t* vertex_count = nullptr;   // [1]: M, the number of vertices

  SD_HOST_DEVICE const int32_t* key(int32_t entry) const { return keys + int64_t(entry) * D; }
  SD_HOST_DEVICE const int32_t* vertex_key(int32_t vertex) const { return vertex_keys + int64_t(vertex) * D; }
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
// smallest entry with that key, whatever the order in which threads arrive. The table must have
// room for every entry.
template <int D>
SD_HOST_DEVICE void insert_entry(const LatticeArrays<D>& L, int32_t entry) {
  const int32_t* key = L.key(entry);
  const uint32_t hash = hash_key<D>(key);
  uint32_t slot = hash & L.table_mask;
  for (;;) {
    int32_t* held_at = &L.table[slot].held;
    int32_t held = atomic_load(held_at);
    if (held == kEmptySlot) {
      held = atomic_compare_swap(held_at, kEmptySlot, entry);
      if (held == kEmptySlot) {
        L.table[slot].hash = hash;  // read only after this step
        break;
      }
    }
    if (same_key<D>(L.key(held), key)) {
      atomic_min(held_at, entry);
      break;
    }
    slot = (slot + 1) & L.table_mask;
  }
  L.entry_slot[entry] = static_cast<int32_t>(slot);
}

// Step 3 (per entry): 1 when the entry is the first with its key (the input of a prefix sum).
template <int D>
SD_HOST_DEVICE int32_t owns_key(const LatticeArrays<D>& L, int32_t entry) {
  return L.table[L.entry_slot[entry]].held == entry ? 1 : 0;
}

// Step 4 (per entry, after the prefix sum into owner_rank): the entry's vertex, the vertex's key
// and the count of entries per vertex (vertex_size must be zero before).
template <int D>
SD_HOST_DEVICE void assign_vertex(const LatticeArrays<D>& L, int32_t entry) {
  const int32_t owner = L.table[L.entry_slot[entry]].held;
  const int32_t vertex = L.owner_rank[owner];
  L.entry_vertex[entry] = vertex;
  if (owner == entry)
    for (int k = 0; k < D; ++k) L.vertex_keys[int64_t(vertex) * D + k] = L.key(entry)[k];
  atomic_fetch_add(L.vertex_size + vertex, 1);
}

// Step 5 (per table slot, after step 4): the slot now names its vertex, for the lookups of step 6.
template <int D>
SD_HOST_DEVICE void relabel_slot(const LatticeArrays<D>& L, uint32_t slot) {
  const int32_t held = L.table[slot].held;
  if (held != kEmptySlot) L.table[slot].held = L.owner_rank[held];
}

// Vertex holding `key` (after step 5), or M when the lattice has no such vertex.
template <int D>
SD_HOST_DEVICE int32_t find_vertex(const LatticeArrays<D>& L, const int32_t* key, uint32_t hash,
                                   int32_t vertex_count) {
  for (uint32_t slot = hash & L.table_mask;; slot = (slot + 1) & L.table_mask) {
    const TableSlot probe = L.table[slot];
    if (probe.held == kEmptySlot) return vertex_count;
    if (probe.hash == hash && same_key<D>(L.vertex_key(probe.held), key)) return probe.held;
  }
}

// The key of the lattice point one step from `key` along `axis` (the blur is symmetric in the
// two directions, -1 and +1); the last axis is the implied coordinate, where only the others move.
template <int D>
SD_HOST_DEVICE void neighbor_key(const int32_t* key, int axis, int direction, int32_t* out) {
  for (int k = 0; k < D; ++k) out[k] = key[k] + direction;
  if (axis < D) out[axis] = key[axis] - direction * D;
}

// One step through the lattice: along `axis`, in `direction` -1 or +1.
struct LatticeStep {
  int axis, direction;
};

// The vertices one `steps[i]` from `vertex` into found[i] (M where absent). All slots are
// requested before the first is probed, so that their memory latencies overlap.
template <int D, int kCount>
SD_HOST_DEVICE void look_up_neighbors(const LatticeArrays<D>& L, int32_t vertex, int32_t vertex_count,
                                      const LatticeStep (&steps)[kCount], int32_t (&found)[kCount]) {
  const int32_t* key = L.vertex_key(vertex);
  int32_t around[kCount][D];
  uint32_t hash[kCount];
  for (int i = 0; i < kCount; ++i) {
    neighbor_key<D>(key, steps[i].axis, steps[i].direction, around[i]);
    hash[i] = hash_key<D>(around[i]);
    prefetch(L.table + (hash[i] & L.table_mask));
  }
  for (int i = 0; i < kCount; ++i) found[i] = find_vertex<D>(L, around[i], hash[i], vertex_count);
}

// Step 6 (per vertex, once every lower neighbour reads M): its upper neighbour along each of the
// D+1 axes, and itself as that neighbour's lower one. A vertex is the lower neighbour of at most
// one vertex per axis, so half the lookups give both neighbours, which the blur reads, or M where
// absent.
template <int D>
SD_HOST_DEVICE void link_neighbors(const LatticeArrays<D>& L, int32_t vertex, int32_t vertex_count) {
  LatticeStep steps[D + 1];
  for (int axis = 0; axis <= D; ++axis) steps[axis] = {axis, 1};
  int32_t upper[D + 1];
  look_up_neighbors<D>(L, vertex, vertex_count, steps, upper);
  for (int axis = 0; axis <= D; ++axis) {
    int32_t* along_axis = L.neighbors + int64_t(axis) * L.neighbor_stride * 2;
    along_axis[int64_t(vertex) * 2 + 1] = upper[axis];
    if (upper[axis] != vertex_count) along_axis[int64_t(upper[axis]) * 2] = vertex;
  }
}

}  // namespace segdeploy::densecrf

#endif
