// TensorRT IPluginV3 "UpsampleArgmax" (version 1): the fused bilinear upsample + argmax node that
// segdeploy's export writes for `--head labels --fused` (segdeploy/head/fuse.py), run by the CUDA
// kernel of libsegdeploy_kernels (sd_upsample_argmax_cuda) on TensorRT's stream; it never waits.
//
// Inputs: scores (N, C, h, w) float32 or float16; reference, any tensor of a float type whose last
// two dims are the output's (H, W) (the graph's image input), never read.
// Output: labels (N, H, W) int32. TensorRT gives plugins no uint8 tensors (DataType::kUINT8 is
// "not supported" for IPluginV3OneBuild::getOutputDataTypes in TensorRT 10.x and 11.x), so the
// plugin writes int32 labels whatever labels_dtype says, and a graph that wants uint8 labels for
// TensorRT casts them after the node.
// Attributes (the ONNX node's, as TensorRT's ONNX parser passes them: floats kFLOAT32, strings
// kCHAR): coordinate_transformation_mode ("half_pixel" | "pytorch_half_pixel" | "align_corners" |
// "asymmetric"), scale_height, scale_width (float; 0: out / in), labels_dtype ("uint8" |
// "int32"; uint8 still refuses more than 256 classes, as the ONNX node does).
//
// No workspace. Shapes are dynamic: the output's dims follow the inputs' at every enqueue.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "plugin_support.h"
#include "segdeploy/upsample_argmax.h"

namespace segdeploy::trt {
namespace {

using namespace nvinfer1;

constexpr char kName[] = "UpsampleArgmax";

void log_error(const std::string& what) { trt::log_error(kName, what); }

constexpr const char* kCoordinateModes[] = {"half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"};

struct Attributes {
  std::string coordinates = "half_pixel";
  int32_t coordinates_code = SD_RESIZE_HALF_PIXEL;
  float scale_height = 0.0f, scale_width = 0.0f;
  std::string labels_dtype = "int32";
};

// The attributes in `fields` over the defaults; false (and *error) for a field of a wrong type or
// an unknown value.
bool parse(const PluginFieldCollection* fields, Attributes* out, std::string* error) {
  Attributes a;
  for (int32_t i = 0; fields != nullptr && i < fields->nbFields; ++i) {
    const PluginField& field = fields->fields[i];
    if (field.data == nullptr || field.name == nullptr) continue;
    bool ok = true;
    if (std::strcmp(field.name, "coordinate_transformation_mode") == 0) ok = field_text(field, &a.coordinates, error);
    if (std::strcmp(field.name, "scale_height") == 0) ok = field_float(field, &a.scale_height, error);
    if (std::strcmp(field.name, "scale_width") == 0) ok = field_float(field, &a.scale_width, error);
    if (std::strcmp(field.name, "labels_dtype") == 0) ok = field_text(field, &a.labels_dtype, error);
    if (!ok) return false;
  }
  a.coordinates_code = -1;
  for (int32_t code = 0; code < 4; ++code)
    if (a.coordinates == kCoordinateModes[code]) a.coordinates_code = code;
  if (a.coordinates_code < 0) {
    *error = "attribute coordinate_transformation_mode: \"" + a.coordinates +
             "\" is not half_pixel, pytorch_half_pixel, align_corners or asymmetric";
    return false;
  }
  if (a.labels_dtype != "uint8" && a.labels_dtype != "int32") {
    *error = "attribute labels_dtype: \"" + a.labels_dtype + "\" is neither uint8 nor int32";
    return false;
  }
  *out = std::move(a);
  return true;
}

// The kernel's arguments for scores and labels of these dims (sizes 1 where a dim is unknown, as
// when the attributes are checked at creation); the pointers are placeholders until enqueue.
sd_upsample_argmax_io make_io(const Attributes& a, const Dims& scores, const Dims& labels, DataType scores_type) {
  const auto dim = [](const Dims& dims, int32_t i) {
    return i < dims.nbDims && dims.d[i] > 0 ? int32_t(dims.d[i]) : 1;
  };
  sd_upsample_argmax_io io{};
  io.scores = reinterpret_cast<const void*>(1);
  io.scores_dtype = scores_type == DataType::kHALF ? SD_DTYPE_FLOAT16 : SD_DTYPE_FLOAT32;
  io.batch = dim(scores, 0);
  io.classes = dim(scores, 1);
  io.in_height = dim(scores, 2);
  io.in_width = dim(scores, 3);
  io.out_height = dim(labels, 1);
  io.out_width = dim(labels, 2);
  io.coordinates = a.coordinates_code;
  io.scale_height = a.scale_height;
  io.scale_width = a.scale_width;
  io.labels = reinterpret_cast<void*>(1);
  // The labels are int32 in TensorRT; the uint8 attribute keeps its class limit (checked apart).
  io.labels_dtype = SD_LABELS_INT32;
  return io;
}

// Whether the kernel takes io (and the uint8 attribute its classes); the objection is logged.
bool usable(const Attributes& a, const sd_upsample_argmax_io& io) {
  if (a.labels_dtype == "uint8" && io.classes > 256) {
    log_error("labels_dtype uint8 holds at most 256 classes, the scores have " + std::to_string(io.classes));
    return false;
  }
  if (sd_upsample_argmax_validate(&io) != SD_OK) {
    log_error(sd_last_error());
    return false;
  }
  return true;
}

bool is_float(DataType type) { return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16; }

class UpsampleArgmaxPlugin : public PluginV3<UpsampleArgmaxPlugin> {
 public:
  static constexpr PluginId kId{kName, "1", ""};
  static constexpr int32_t kInputs = 2;
  static constexpr DataType kOutputTypes[] = {DataType::kINT32};

  explicit UpsampleArgmaxPlugin(Attributes attributes) : a_(std::move(attributes)) {}

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override {
    if (nbInputs != 2 || nbOutputs != 1) return -1;
    if (in[0].desc.dims.nbDims != 4 || in[1].desc.dims.nbDims < 2) {
      log_error("scores must be (N, C, h, w) and the reference at least 2-D (its last two dims are the output's)");
      return -1;
    }
    return usable(a_, make_io(a_, in[0].max, out[0].max, in[0].desc.type)) ? 0 : -1;
  }

  // Whether input `pos` may have this type.
  static bool takes_input(int32_t pos, DataType type) {
    if (pos == 0) return type == DataType::kFLOAT || type == DataType::kHALF;
    return is_float(type);  // never read: whatever float type the graph gives
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
                          int32_t nbOutputs, IExprBuilder&) noexcept override {
    if (nbInputs != 2 || nbOutputs != 1 || inputs[0].nbDims != 4 || inputs[1].nbDims < 2) return -1;
    outputs[0].nbDims = 3;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = inputs[1].d[inputs[1].nbDims - 2];
    outputs[0].d[2] = inputs[1].d[inputs[1].nbDims - 1];
    return 0;
  }

  size_t getWorkspaceSize(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    return 0;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    if (volume(outputDesc[0].dims) == 0) return 0;  // an empty batch: nothing to label
    sd_upsample_argmax_io io = make_io(a_, inputDesc[0].dims, outputDesc[0].dims, inputDesc[0].type);
    io.scores = inputs[0];
    io.labels = outputs[0];
    const int status = sd_upsample_argmax_cuda(&io, stream);
    if (status != SD_OK) log_error(sd_last_error());
    return status == SD_OK ? 0 : -1;
  }

  std::vector<PluginField> serialized_fields() const {
    return {PluginField("coordinate_transformation_mode", a_.coordinates.c_str(), PluginFieldType::kCHAR,
                        int32_t(a_.coordinates.size())),
            PluginField("scale_height", &a_.scale_height, PluginFieldType::kFLOAT32, 1),
            PluginField("scale_width", &a_.scale_width, PluginFieldType::kFLOAT32, 1),
            PluginField("labels_dtype", a_.labels_dtype.c_str(), PluginFieldType::kCHAR,
                        int32_t(a_.labels_dtype.size()))};
  }

 private:
  Attributes a_;
};

}  // namespace

IPluginCreatorInterface* upsample_argmax_creator() {
  // Rejects what the kernel would reject (a negative or non-finite scale), at build time rather
  // than at the first enqueue.
  static PluginCreator<UpsampleArgmaxPlugin, Attributes> creator(
      parse, [](const Attributes& a) { return usable(a, make_io(a, Dims{}, Dims{}, DataType::kFLOAT)); });
  return &creator;
}

}  // namespace segdeploy::trt
