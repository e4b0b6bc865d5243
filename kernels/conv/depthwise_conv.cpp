// The C ABI of the depthwise convolution and the separable block: sd_conv_output_size, validation,
// and the CPU entry points, which run the CPU driver built for the best instruction set available.
#include <cmath>
#include <cstdint>
#include <limits>

#include "../src/cpu_features.h"
#include "../src/status_internal.h"
#include "../src/thread_pool.h"
#include "depthwise_conv_common.h"
#include "depthwise_conv_cpu.h"

namespace segdeploy::conv {
namespace {

Error output_size(int32_t in, int32_t kernel, int32_t stride, int32_t dilation, int32_t pad_begin,
                  int32_t pad_end, const char* axis, int32_t* out) {
  if (in < 1) return invalid("in_", axis, " must be >= 1, got ", in);
  if (kernel < 1 || kernel > kMaxKernel)
    return invalid("kernel_", axis, " must be 1..", kMaxKernel, ", got ", kernel);
  if (stride < 1) return invalid("stride_", axis, " must be >= 1, got ", stride);
  if (dilation < 1) return invalid("dilation_", axis, " must be >= 1, got ", dilation);
  if (pad_begin < 0 || pad_end < 0)
    return invalid("pads along ", axis, " must be >= 0, got ", pad_begin, " and ", pad_end);
  const int64_t padded = int64_t(in) + pad_begin + pad_end;
  const int64_t extent = int64_t(dilation) * (kernel - 1) + 1;  // the dilated kernel's span
  if (padded < extent)
    return invalid("the dilated kernel along ", axis, " spans ", extent, " pixels (dilation ", dilation,
                   " x (kernel ", kernel, " - 1) + 1) but the padded input has only ", padded, " (", in, " + pads ",
                   pad_begin, " + ", pad_end, "): no output");
  const int64_t size = (padded - extent) / stride + 1;
  if (size > std::numeric_limits<int32_t>::max() / 2)
    return invalid("the output ", axis, " ", size, " is too large");
  *out = int32_t(size);
  return {};
}

Error require_activation(const sd_activation& activation, const char* name) {
  switch (activation.kind) {
    case SD_ACTIVATION_NONE:
    case SD_ACTIVATION_HARDSWISH:
      return {};
    case SD_ACTIVATION_CLIP:
      if (std::isnan(activation.lower) || std::isnan(activation.upper) || !(activation.lower <= activation.upper))
        return invalid(name, ": clip needs lower <= upper (neither NaN), got lower=", activation.lower,
                       " upper=", activation.upper);
      return {};
    default:
      return invalid(name, ".kind must be SD_ACTIVATION_NONE (0), SD_ACTIVATION_CLIP (1) or "
                     "SD_ACTIVATION_HARDSWISH (2), got ", activation.kind);
  }
}

Error require_threads(int num_threads) {
  if (num_threads < 0) return invalid("num_threads must be >= 0 (0: all cores), got ", num_threads);
  return {};
}

}  // namespace

Error validate(const sd_depthwise_conv_io* io, bool separable) {
  if (io == nullptr) return invalid("io must not be NULL");
  if (io->input == nullptr) return invalid("input must not be NULL");
  if (io->weight == nullptr) return invalid("weight must not be NULL");
  if (separable && io->output != nullptr)
    return invalid("depthwise.output must be NULL in a separable block (its result is never stored)");
  if (!separable && io->output == nullptr) return invalid("output must not be NULL");
  if (io->dtype != SD_DTYPE_FLOAT32 && io->dtype != SD_DTYPE_FLOAT16)
    return invalid("dtype must be SD_DTYPE_FLOAT32 (0) or SD_DTYPE_FLOAT16 (1), got ", io->dtype);
  if (io->batch < 1 || io->channels < 1)
    return invalid("batch and channels must be >= 1, got batch=", io->batch, " channels=", io->channels);
  int32_t out_height = 0, out_width = 0;
  SD_RETURN_IF_ERROR(output_size(io->in_height, io->kernel_height, io->stride_height, io->dilation_height,
                                 io->pad_top, io->pad_bottom, "height", &out_height));
  SD_RETURN_IF_ERROR(output_size(io->in_width, io->kernel_width, io->stride_width, io->dilation_width, io->pad_left,
                                 io->pad_right, "width", &out_width));
  if (io->out_height != out_height || io->out_width != out_width)
    return invalid("out_height x out_width must be ", out_height, " x ", out_width,
                   " (floor((in + pads - dilation * (kernel - 1) - 1) / stride) + 1), got ", io->out_height, " x ",
                   io->out_width);
  return require_activation(io->activation, "activation");
}

Error validate(const sd_separable_conv_io* io) {
  if (io == nullptr) return invalid("io must not be NULL");
  SD_RETURN_IF_ERROR(validate(&io->depthwise, true));
  if (io->out_channels < 1) return invalid("out_channels must be >= 1, got ", io->out_channels);
  if (io->pointwise_weight == nullptr) return invalid("pointwise_weight must not be NULL");
  if (io->output == nullptr) return invalid("output must not be NULL");
  return require_activation(io->pointwise_activation, "pointwise_activation");
}

}  // namespace segdeploy::conv

extern "C" int sd_conv_output_size(int32_t in, int32_t kernel, int32_t stride, int32_t dilation, int32_t pad_begin,
                                   int32_t pad_end, int32_t* out) {
  return segdeploy::report([&]() -> segdeploy::Error {
    if (out == nullptr) return segdeploy::invalid("out must not be NULL");
    return segdeploy::conv::output_size(in, kernel, stride, dilation, pad_begin, pad_end, "axis", out);
  });
}

extern "C" int sd_depthwise_conv_validate(const sd_depthwise_conv_io* io) {
  return segdeploy::report([&] { return segdeploy::conv::validate(io); });
}

extern "C" int sd_separable_conv_validate(const sd_separable_conv_io* io) {
  return segdeploy::report([&] { return segdeploy::conv::validate(io); });
}

namespace {

template <typename Io>
using CpuDriver = segdeploy::Error (*)(const Io&, int);

// Validates io, then runs it with the driver of the widest instruction set this CPU has; a driver
// is nullptr where the library was built without that instruction set.
template <typename Io>
int run_cpu(const Io* io, int num_threads, CpuDriver<Io> portable, CpuDriver<Io> avx2, CpuDriver<Io> avx512) {
  return segdeploy::report([&]() -> segdeploy::Error {
    SD_RETURN_IF_ERROR(segdeploy::conv::validate(io));
    SD_RETURN_IF_ERROR(segdeploy::conv::require_threads(num_threads));
    const int threads = num_threads > 0 ? num_threads : segdeploy::available_cores();
#if defined(SD_CPU_X86_64_V4)
    if (avx512 && segdeploy::cpu_has_x86_64_v4()) return avx512(*io, threads);
#endif
#if defined(SD_CPU_X86_64_V3)
    if (avx2 && segdeploy::cpu_has_x86_64_v3()) return avx2(*io, threads);
#endif
    (void)avx2, (void)avx512;
    return portable(*io, threads);
  });
}

#if defined(SD_CPU_X86_64_V4)
#define SD_CONV_V4(function) segdeploy::conv::x86_64_v4::function
#else
#define SD_CONV_V4(function) nullptr
#endif
#if defined(SD_CPU_X86_64_V3)
#define SD_CONV_V3(function) segdeploy::conv::x86_64_v3::function
#else
#define SD_CONV_V3(function) nullptr
#endif

}  // namespace

extern "C" int sd_depthwise_conv_cpu(const sd_depthwise_conv_io* io, int num_threads) {
  return run_cpu<sd_depthwise_conv_io>(io, num_threads, segdeploy::conv::baseline::run_depthwise,
                                       SD_CONV_V3(run_depthwise), SD_CONV_V4(run_depthwise));
}

extern "C" int sd_separable_conv_cpu(const sd_separable_conv_io* io, int num_threads) {
  return run_cpu<sd_separable_conv_io>(io, num_threads, segdeploy::conv::baseline::run_separable,
                                       SD_CONV_V3(run_separable), SD_CONV_V4(run_separable));
}
