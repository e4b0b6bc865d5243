// TensorRT IPluginV3 "DepthwiseConv" (version 1): the depthwise convolution + bias + activation node
// that `segdeploy plugins` writes for a depthwise Conv (+ Relu | Clip | HardSwish) (segdeploy/conv),
// run by the CUDA kernel of libsegdeploy_kernels (sd_depthwise_conv_cuda) on TensorRT's stream; it
// never waits.
//
// Inputs: X (N, C, H, W), W (C, 1, kh, kw), optionally B (C): all float32 or all float16 (TensorRT
// builds strongly typed networks from the ONNX file's types, or picks one of the two for all three).
// Output: Y (N, C, H', W') of X's type, H' = floor((H + pad_top + pad_bottom - dilation*(kh-1) - 1)
// / stride) + 1 (W' alike), with dynamic N, H and W.
// Attributes (the ONNX node's, as TensorRT's ONNX parser passes them: ints kINT32 of their length,
// floats kFLOAT32, strings kCHAR): kernel_shape (2 ints, required), strides, dilations (2 ints,
// default 1), pads (4 ints, top, left, bottom, right: ONNX's order; default 0), activation ("none" |
// "clip" | "hardswish"), activation_lower, activation_upper (float; clip's bounds, FLT_MAX for an
// unbounded ReLU).
//
// No workspace. The separable block (SeparableConv) has no plugin: TensorRT fuses the pointwise 1x1
// convolution itself.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "plugin_support.h"
#include "segdeploy/depthwise_conv.h"

namespace segdeploy::trt {
namespace {

using namespace nvinfer1;

constexpr char kName[] = "DepthwiseConv";

void log_error(const std::string& what) { trt::log_error(kName, what); }

constexpr const char* kActivations[] = {"none", "clip", "hardswish"};  // sd_activation_kind's order

struct Attributes {
  int32_t kernel_shape[2] = {0, 0};  // (height, width); 0: not given
  int32_t strides[2] = {1, 1};
  int32_t dilations[2] = {1, 1};
  int32_t pads[4] = {0, 0, 0, 0};  // top, left, bottom, right
  std::string activation = "none";
  int32_t activation_kind = SD_ACTIVATION_NONE;
  float activation_lower = -FLT_MAX, activation_upper = FLT_MAX;
};

// The attributes in `fields` over the defaults; false (and *error) for a field of a wrong type or
// length, an unknown activation or a missing kernel_shape.
bool parse(const PluginFieldCollection* fields, Attributes* out, std::string* error) {
  Attributes a;
  for (int32_t i = 0; fields != nullptr && i < fields->nbFields; ++i) {
    const PluginField& field = fields->fields[i];
    if (field.data == nullptr || field.name == nullptr) continue;
    bool ok = true;
    if (std::strcmp(field.name, "kernel_shape") == 0) ok = field_ints(field, a.kernel_shape, 2, error);
    if (std::strcmp(field.name, "strides") == 0) ok = field_ints(field, a.strides, 2, error);
    if (std::strcmp(field.name, "dilations") == 0) ok = field_ints(field, a.dilations, 2, error);
    if (std::strcmp(field.name, "pads") == 0) ok = field_ints(field, a.pads, 4, error);
    if (std::strcmp(field.name, "activation") == 0) ok = field_text(field, &a.activation, error);
    if (std::strcmp(field.name, "activation_lower") == 0) ok = field_float(field, &a.activation_lower, error);
    if (std::strcmp(field.name, "activation_upper") == 0) ok = field_float(field, &a.activation_upper, error);
    if (!ok) return false;
  }
  if (a.kernel_shape[0] == 0 && a.kernel_shape[1] == 0) {
    *error = "attribute kernel_shape is missing";
    return false;
  }
  a.activation_kind = -1;
  for (int32_t kind = 0; kind < 3; ++kind)
    if (a.activation == kActivations[kind]) a.activation_kind = kind;
  if (a.activation_kind < 0) {
    *error = "attribute activation: \"" + a.activation + "\" is not none, clip or hardswish";
    return false;
  }
  *out = std::move(a);
  return true;
}

// The kernel's arguments for X and Y of these dims (where a dim is unknown, as when the attributes
// are checked at creation: a size at which the output has one row and column); the pointers are
// placeholders until enqueue.
sd_depthwise_conv_io make_io(const Attributes& a, const Dims& x, const Dims& y, DataType type, bool bias) {
  const auto dim = [](const Dims& dims, int32_t i, int32_t unknown) {
    return i < dims.nbDims && dims.d[i] >= 0 ? int32_t(dims.d[i]) : unknown;
  };
  sd_depthwise_conv_io io{};
  io.input = reinterpret_cast<const void*>(1);
  io.dtype = type == DataType::kHALF ? SD_DTYPE_FLOAT16 : SD_DTYPE_FLOAT32;
  io.kernel_height = a.kernel_shape[0];
  io.kernel_width = a.kernel_shape[1];
  io.stride_height = a.strides[0];
  io.stride_width = a.strides[1];
  io.dilation_height = a.dilations[0];
  io.dilation_width = a.dilations[1];
  io.pad_top = a.pads[0];
  io.pad_left = a.pads[1];
  io.pad_bottom = a.pads[2];
  io.pad_right = a.pads[3];
  io.batch = dim(x, 0, 1);
  io.channels = dim(x, 1, 1);
  io.in_height = dim(x, 2, std::max(1, io.dilation_height * (io.kernel_height - 1) + 1));
  io.in_width = dim(x, 3, std::max(1, io.dilation_width * (io.kernel_width - 1) + 1));
  io.weight = reinterpret_cast<const void*>(1);
  io.bias = bias ? reinterpret_cast<const void*>(1) : nullptr;
  io.activation = sd_activation{a.activation_kind, a.activation_lower, a.activation_upper};
  io.output = reinterpret_cast<void*>(1);
  io.out_height = dim(y, 2, 0);
  io.out_width = dim(y, 3, 0);
  if (y.nbDims != 4 || y.d[2] < 0 || y.d[3] < 0) {  // not known: the formula's, which validate rechecks
    sd_conv_output_size(io.in_height, io.kernel_height, io.stride_height, io.dilation_height, io.pad_top,
                        io.pad_bottom, &io.out_height);
    sd_conv_output_size(io.in_width, io.kernel_width, io.stride_width, io.dilation_width, io.pad_left,
                        io.pad_right, &io.out_width);
  }
  return io;
}

// Whether the kernel takes io; the objection is logged.
bool usable(const sd_depthwise_conv_io& io) {
  if (sd_depthwise_conv_validate(&io) != SD_OK) {
    log_error(sd_last_error());
    return false;
  }
  return true;
}

// Whether W (C, 1, kh, kw) and B (C) fit X's channels and the kernel_shape attribute (an unknown
// dim, -1, fits anything); the objection is logged.
bool weights_fit(const Attributes& a, const Dims& x, const Dims& w, const Dims* b) {
  const auto same = [](int64_t dim, int64_t wanted) { return dim < 0 || wanted < 0 || dim == wanted; };
  const int64_t channels = x.nbDims == 4 ? x.d[1] : -1;
  if (x.nbDims != 4 || w.nbDims != 4 || !same(w.d[0], channels) || !same(w.d[1], 1) ||
      !same(w.d[2], a.kernel_shape[0]) || !same(w.d[3], a.kernel_shape[1])) {
    log_error("X must be (N, C, H, W) and W (C, 1, kh, kw) with kernel_shape's kh, kw");
    return false;
  }
  if (b != nullptr && (b->nbDims != 1 || !same(b->d[0], channels))) {
    log_error("B must be (C): one bias per channel of X");
    return false;
  }
  return true;
}

class DepthwiseConvPlugin : public PluginV3<DepthwiseConvPlugin> {
 public:
  static constexpr PluginId kId{kName, "1", ""};

  explicit DepthwiseConvPlugin(Attributes attributes) : a_(std::move(attributes)) {}

  // X, W and the optional B; one output, of X's type, which W and B share (the base's fixed types
  // hidden).
  static bool takes_input_count(int32_t nbInputs) { return nbInputs == 2 || nbInputs == 3; }
  static int32_t output_count() { return 1; }
  static bool output_types(DataType* outputTypes, DataType const* inputTypes) {
    outputTypes[0] = inputTypes[0];
    return inputTypes[0] == DataType::kFLOAT || inputTypes[0] == DataType::kHALF;
  }
  static bool takes_tensor(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t) {
    const DataType type = inOut[pos].desc.type;
    if (pos == 0) return type == DataType::kFLOAT || type == DataType::kHALF;
    return type == inOut[0].desc.type;
  }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override {
    if (!takes_input_count(nbInputs) || nbOutputs != 1) return -1;
    bias_ = nbInputs == 3;
    if (!weights_fit(a_, in[0].desc.dims, in[1].desc.dims, bias_ ? &in[2].desc.dims : nullptr)) return -1;
    // The profile's smallest and largest shapes: each must leave an output of at least 1x1.
    return usable(make_io(a_, in[0].min, out[0].min, in[0].desc.type, bias_)) &&
                   usable(make_io(a_, in[0].max, out[0].max, in[0].desc.type, bias_))
               ? 0
               : -1;
  }

  int32_t onShapeChange(PluginTensorDesc const*, int32_t nbInputs, PluginTensorDesc const*,
                        int32_t) noexcept override {
    bias_ = nbInputs == 3;  // a deserialized plugin learns its inputs here, before its first enqueue
    return takes_input_count(nbInputs) ? 0 : -1;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
                          int32_t nbOutputs, IExprBuilder& expr) noexcept override {
    if (!takes_input_count(nbInputs) || nbOutputs != 1 || inputs[0].nbDims != 4) return -1;
    // out = floor((in + pad_begin + pad_end - dilation * (kernel - 1) - 1) / stride) + 1
    const auto size = [&](const IDimensionExpr* in, int32_t kernel, int32_t stride, int32_t dilation,
                          int32_t pad_begin, int32_t pad_end) {
      const int64_t shrink = int64_t(pad_begin) + pad_end - int64_t(dilation) * (kernel - 1) - 1;
      const IDimensionExpr* grown = expr.operation(DimensionOperation::kSUM, *in, *expr.constant(shrink));
      const IDimensionExpr* strided =
          expr.operation(DimensionOperation::kFLOOR_DIV, *grown, *expr.constant(std::max(stride, 1)));
      return expr.operation(DimensionOperation::kSUM, *strided, *expr.constant(1));
    };
    outputs[0].nbDims = 4;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = inputs[0].d[1];
    outputs[0].d[2] = size(inputs[0].d[2], a_.kernel_shape[0], a_.strides[0], a_.dilations[0], a_.pads[0], a_.pads[2]);
    outputs[0].d[3] = size(inputs[0].d[3], a_.kernel_shape[1], a_.strides[1], a_.dilations[1], a_.pads[1], a_.pads[3]);
    return 0;
  }

  size_t getWorkspaceSize(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    return 0;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    if (volume(outputDesc[0].dims) == 0) return 0;  // an empty batch: nothing to compute
    sd_depthwise_conv_io io = make_io(a_, inputDesc[0].dims, outputDesc[0].dims, inputDesc[0].type, bias_);
    io.input = inputs[0];
    io.weight = inputs[1];
    io.bias = bias_ ? inputs[2] : nullptr;
    io.output = outputs[0];
    const int status = sd_depthwise_conv_cuda(&io, stream);
    if (status != SD_OK) log_error(sd_last_error());
    return status == SD_OK ? 0 : -1;
  }

  std::vector<PluginField> serialized_fields() const {
    return {PluginField("kernel_shape", a_.kernel_shape, PluginFieldType::kINT32, 2),
            PluginField("strides", a_.strides, PluginFieldType::kINT32, 2),
            PluginField("dilations", a_.dilations, PluginFieldType::kINT32, 2),
            PluginField("pads", a_.pads, PluginFieldType::kINT32, 4),
            PluginField("activation", a_.activation.c_str(), PluginFieldType::kCHAR, int32_t(a_.activation.size())),
            PluginField("activation_lower", &a_.activation_lower, PluginFieldType::kFLOAT32, 1),
            PluginField("activation_upper", &a_.activation_upper, PluginFieldType::kFLOAT32, 1)};
  }

 private:
  Attributes a_;
  bool bias_ = true;  // whether B is given (the node's third input)
};

}  // namespace

IPluginCreatorInterface* depthwise_conv_creator() {
  // Rejects what the kernel would reject (a kernel over 7, a stride or dilation under 1, a negative
  // pad, clip bounds out of order), at build time rather than at the first enqueue.
  static PluginCreator<DepthwiseConvPlugin, Attributes> creator(
      parse, [](const Attributes& a) { return usable(make_io(a, Dims{}, Dims{}, DataType::kFLOAT, true)); });
  return &creator;
}

}  // namespace segdeploy::trt
