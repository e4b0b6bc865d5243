// TensorRT IPluginV3 "DenseCRF" (version 1): the dense CRF node that segdeploy.crf.append_crf_node appends
// to an exported network, run by the CUDA kernels of libsegdeploy_kernels (sd_crf_cuda).
//
// Inputs: logits (N, C, H, W) float32 or float16; image float32 (N, H, W, 3) or (N, 3, H, W),
// RGB values 0..255. TensorRT lets no layer but a cast read a uint8 tensor (DataType::kUINT8), so
// the graph casts its uint8 image input to float32 for this node, and enqueue turns it back into
// the uint8 image that sd_crf_cuda takes (rounded, clamped to 0..255), in the workspace.
// Outputs: probabilities float32 (N, C, H, W), labels int32 (N, H, W).
// Attributes (the ONNX node's, passed on by TensorRT's ONNX parser, whose loadFields gives
// floats as kFLOAT32, ints as kINT32 and strings as kCHAR with their NUL): spatial_weight,
// spatial_theta, bilateral_weight, bilateral_theta_xy, bilateral_theta_rgb (float),
// iterations (int), normalization ("symmetric" | "after"), unary_kind ("logits" |
// "probabilities" | "neg_log_prob").
//
// Load the library with IPluginRegistry::loadLibrary (trtexec --dynamicPlugins=...), which
// calls setLoggerFinder() and getCreators() (plugin_library.cpp). The workspace comes from
// TensorRT, sized by getWorkspaceSize for the largest shapes of the profile: the uint8 image, then
// sd_crf_cuda's workspace, each at a multiple of 256 bytes. enqueue never waits for the stream.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "plugin_support.h"
#include "segdeploy/densecrf.h"

namespace segdeploy::trt {
namespace {

using namespace nvinfer1;

constexpr char kName[] = "DenseCRF";

void log_error(const std::string& what) { trt::log_error(kName, what); }
bool cuda_ok(cudaError_t result, const char* what) { return trt::cuda_ok(kName, result, what); }

constexpr size_t kAlignment = 256;  // of each part of the workspace

size_t align_up(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

// Whether the image's dims fit the logits' (N, C, H, W) as (N, H, W, 3) or as (N, 3, H, W); an
// unknown dim (-1, at build time) fits anything. *hwc tells which (HWC when both fit).
bool image_fits(const Dims& logits, const Dims& image, bool* hwc) {
  if (logits.nbDims != 4 || image.nbDims != 4) return false;
  const auto same = [](int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; };
  const bool batch = same(image.d[0], logits.d[0]);
  const bool as_hwc = batch && same(image.d[1], logits.d[2]) && same(image.d[2], logits.d[3]) && same(image.d[3], 3);
  const bool as_chw = batch && same(image.d[1], 3) && same(image.d[2], logits.d[2]) && same(image.d[3], logits.d[3]);
  if (hwc != nullptr) *hwc = as_hwc;
  return as_hwc || as_chw;
}

// Workspace bytes for logits and an image of at most these dims: the uint8 image, then sd_crf_cuda's
// workspace, each at a multiple of kAlignment. False (logged) when sd_crf_cuda_workspace_bytes
// fails: its CUB size queries need a CUDA device.
bool workspace_bytes(const Dims& logits, const Dims& image, size_t* bytes) {
  if (volume(logits) == 0 || volume(image) == 0) {
    log_error("cannot size the workspace: the profile's largest shapes are not known");
    return false;
  }
  size_t crf_bytes = 0;
  if (sd_crf_cuda_workspace_bytes(int32_t(logits.d[1]), int32_t(logits.d[2]), int32_t(logits.d[3]), &crf_bytes) != SD_OK) {
    log_error(std::string("cannot size the workspace (building needs a CUDA device): ") + sd_last_error());
    return false;
  }
  *bytes = align_up(volume(image)) + align_up(crf_bytes);
  return true;
}

// The float image (whole numbers 0..255, from a uint8 image's cast) as uint8, rounded and clamped.
__global__ void image_to_uint8(const float* __restrict__ image, uint8_t* __restrict__ out, size_t count) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride)
    out[i] = static_cast<uint8_t>(__float2uint_rn(fminf(fmaxf(image[i], 0.0f), 255.0f)));  // NaN -> 0
}

struct Attributes {
  sd_crf_params params{};
  std::string normalization = "symmetric";
  std::string unary_kind = "logits";
};

int32_t unary_kind_code(const std::string& kind) {
  if (kind == "probabilities") return SD_CRF_UNARY_PROBABILITIES;
  if (kind == "neg_log_prob") return SD_CRF_UNARY_NEG_LOG_PROB;
  return SD_CRF_UNARY_LOGITS;
}

// The attributes in `fields` over the defaults; false (and *error) for a field of a wrong type.
bool parse(const PluginFieldCollection* fields, Attributes* out, std::string* error) {
  Attributes a;
  sd_crf_default_params(&a.params);
  struct FloatField {
    const char* name;
    float* target;
  };
  const FloatField floats[] = {{"spatial_weight", &a.params.spatial_weight},
                               {"spatial_theta", &a.params.spatial_theta},
                               {"bilateral_weight", &a.params.bilateral_weight},
                               {"bilateral_theta_xy", &a.params.bilateral_theta_xy},
                               {"bilateral_theta_rgb", &a.params.bilateral_theta_rgb}};
  for (int32_t i = 0; fields != nullptr && i < fields->nbFields; ++i) {
    const PluginField& field = fields->fields[i];
    if (field.data == nullptr || field.name == nullptr) continue;
    bool ok = true;
    for (const FloatField& f : floats)
      if (std::strcmp(field.name, f.name) == 0) ok = field_float(field, f.target, error);
    if (std::strcmp(field.name, "iterations") == 0) ok = field_int(field, &a.params.iterations, error);
    if (std::strcmp(field.name, "normalization") == 0) ok = field_text(field, &a.normalization, error);
    if (std::strcmp(field.name, "unary_kind") == 0) ok = field_text(field, &a.unary_kind, error);
    if (!ok) return false;
  }
  if (a.normalization != "symmetric" && a.normalization != "after") {
    *error = "attribute normalization: \"" + a.normalization + "\" is neither symmetric nor after";
    return false;
  }
  if (a.unary_kind != "logits" && a.unary_kind != "probabilities" && a.unary_kind != "neg_log_prob") {
    *error = "attribute unary_kind: \"" + a.unary_kind + "\" is not logits, probabilities or neg_log_prob";
    return false;
  }
  a.params.normalization = a.normalization == "after" ? SD_CRF_NORMALIZE_AFTER : SD_CRF_NORMALIZE_SYMMETRIC;
  *out = std::move(a);
  return true;
}

class DenseCrfPlugin : public PluginV3<DenseCrfPlugin> {
 public:
  static constexpr PluginId kId{kName, "1", ""};
  static constexpr int32_t kInputs = 2;
  static constexpr DataType kOutputTypes[] = {DataType::kFLOAT, DataType::kINT32};  // probabilities, labels

  explicit DenseCrfPlugin(Attributes attributes) : a_(std::move(attributes)) {}

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*,
                          int32_t nbOutputs) noexcept override {
    if (nbInputs != 2 || nbOutputs != 2) return -1;
    if (!image_fits(in[0].desc.dims, in[1].desc.dims, nullptr) || !image_fits(in[0].max, in[1].max, nullptr)) {
      log_error("the image must be (N, H, W, 3) or (N, 3, H, W) for logits (N, C, H, W)");
      return -1;
    }
    // getWorkspaceSize cannot fail: a workspace that cannot be sized fails the build here instead of
    // giving an engine whose plugin writes past its workspace.
    size_t bytes = 0;
    return workspace_bytes(in[0].max, in[1].max, &bytes) ? 0 : -1;
  }

  // Whether input `pos` may have this type.
  static bool takes_input(int32_t pos, DataType type) {
    if (pos == 0) return type == DataType::kFLOAT || type == DataType::kHALF;
    return type == DataType::kFLOAT;  // a Cast of the uint8 image (TensorRT casts uint8 only)
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
                          int32_t nbOutputs, IExprBuilder&) noexcept override {
    if (nbInputs != 2 || nbOutputs != 2 || inputs[0].nbDims != 4 || inputs[1].nbDims != 4) return -1;
    outputs[0] = inputs[0];
    outputs[1].nbDims = 3;
    outputs[1].d[0] = inputs[0].d[0];
    outputs[1].d[1] = inputs[0].d[2];
    outputs[1].d[2] = inputs[0].d[3];
    return 0;
  }

  size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    size_t bytes = 0;
    return workspace_bytes(inputs[0].max, inputs[1].max, &bytes) ? bytes : 0;  // 0: configurePlugin failed
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
    const Dims& logits = inputDesc[0].dims;
    const Dims& image = inputDesc[1].dims;
    bool hwc = true;
    if (!image_fits(logits, image, &hwc) || inputDesc[1].type != DataType::kFLOAT) {
      log_error("the image must be float32 (N, H, W, 3) or (N, 3, H, W) for logits (N, C, H, W)");
      return -1;
    }
    // The uint8 image at the start of the workspace, sd_crf_cuda's workspace after it.
    const size_t image_count = volume(image);
    auto* image_uint8 = static_cast<uint8_t*>(workspace);
    if (image_count > 0) {
      constexpr int kThreads = 256;
      const size_t blocks = std::min<size_t>((image_count + kThreads - 1) / kThreads, 4096);
      image_to_uint8<<<unsigned(blocks), kThreads, 0, stream>>>(static_cast<const float*>(inputs[1]), image_uint8,
                                                                image_count);
      if (!cuda_ok(cudaGetLastError(), "launching the image conversion")) return -1;
    }
    sd_crf_io io{};
    io.unary = inputs[0];
    io.unary_dtype = inputDesc[0].type == DataType::kHALF ? SD_DTYPE_FLOAT16 : SD_DTYPE_FLOAT32;
    io.unary_kind = unary_kind_code(a_.unary_kind);
    io.image = image_uint8;
    io.batch = int32_t(logits.d[0]);
    io.classes = int32_t(logits.d[1]);
    io.height = int32_t(logits.d[2]);
    io.width = int32_t(logits.d[3]);
    io.image_layout = hwc ? SD_IMAGE_HWC : SD_IMAGE_CHW;
    io.probabilities = static_cast<float*>(outputs[0]);
    io.labels = static_cast<int32_t*>(outputs[1]);
    size_t bytes = 0;
    int status = sd_crf_cuda_workspace_bytes(io.classes, io.height, io.width, &bytes);
    if (status == SD_OK)
      status = sd_crf_cuda(&a_.params, &io, image_uint8 + align_up(image_count), bytes, /*check_finite=*/0, stream);
    if (status != SD_OK) log_error(sd_last_error());
    return status == SD_OK ? 0 : -1;
  }

  std::vector<PluginField> serialized_fields() const {
    const sd_crf_params& p = a_.params;
    return {PluginField("spatial_weight", &p.spatial_weight, PluginFieldType::kFLOAT32, 1),
            PluginField("spatial_theta", &p.spatial_theta, PluginFieldType::kFLOAT32, 1),
            PluginField("bilateral_weight", &p.bilateral_weight, PluginFieldType::kFLOAT32, 1),
            PluginField("bilateral_theta_xy", &p.bilateral_theta_xy, PluginFieldType::kFLOAT32, 1),
            PluginField("bilateral_theta_rgb", &p.bilateral_theta_rgb, PluginFieldType::kFLOAT32, 1),
            PluginField("iterations", &p.iterations, PluginFieldType::kINT32, 1),
            PluginField("normalization", a_.normalization.c_str(), PluginFieldType::kCHAR,
                        int32_t(a_.normalization.size())),
            PluginField("unary_kind", a_.unary_kind.c_str(), PluginFieldType::kCHAR, int32_t(a_.unary_kind.size()))};
  }

 private:
  Attributes a_;
};

// Whether the kernel takes these attributes (logged when not): what it would reject is rejected
// at build time rather than at the first enqueue.
bool accept(const Attributes& attributes) {
  const sd_crf_io probe{reinterpret_cast<const void*>(1), SD_DTYPE_FLOAT32, unary_kind_code(attributes.unary_kind),
                        reinterpret_cast<const uint8_t*>(1), SD_IMAGE_HWC, 1, 1, 1, 1,
                        reinterpret_cast<float*>(1), nullptr};
  if (sd_crf_validate(&attributes.params, &probe) != SD_OK) {
    log_error(sd_last_error());
    return false;
  }
  return true;
}

}  // namespace

IPluginCreatorInterface* dense_crf_creator() {
  static PluginCreator<DenseCrfPlugin, Attributes> creator(parse, accept);
  return &creator;
}

}  // namespace segdeploy::trt
