// Grow-only, 64-byte aligned scratch memory of one thread (a thread_local of a CPU driver), so that
// repeated calls allocate nothing.
#ifndef SEGDEPLOY_SRC_SCRATCH_H
#define SEGDEPLOY_SRC_SCRATCH_H

#include <cstddef>
#include <new>

namespace segdeploy {

class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { ::operator delete[](data_, kAlignment); }
  // At least `floats` floats (their contents undefined), or nullptr when out of memory.
  float* reserve(size_t floats) {
    if (floats > size_) {
      ::operator delete[](data_, kAlignment);
      data_ = static_cast<float*>(::operator new[](floats * sizeof(float), kAlignment, std::nothrow));
      size_ = data_ != nullptr ? floats : 0;
    }
    return data_;
  }

 private:
  static constexpr std::align_val_t kAlignment{64};
  float* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace segdeploy

#endif
