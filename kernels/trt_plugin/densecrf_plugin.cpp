// TensorRT IPluginV3 "DenseCRF" (version 1): the dense CRF node that segdeploy.crf.append_crf_node appends
// to an exported network, run by the CUDA kernels of libsegdeploy_kernels (sd_crf_cuda).
//
// Inputs: logits (N, C, H, W) float32 or float16, image uint8 (N, H, W, 3) or (N, 3, H, W).
// Outputs: probabilities float32 (N, C, H, W), labels int32 (N, H, W).
// Attributes (the ONNX node's, passed on by TensorRT's ONNX parser): spatial_weight,
// spatial_theta, bilateral_weight, bilateral_theta_xy, bilateral_theta_rgb (float),
// iterations (int), normalization ("symmetric" | "after"), unary_kind ("logits" |
// "probabilities" | "neg_log_prob").
//
// Load the library with IPluginRegistry::loadLibrary (trtexec --dynamicPlugins=...), which
// calls setLoggerFinder() and getCreators() below. The workspace comes from TensorRT, sized by
// getWorkspaceSize for the largest shape of the profile; enqueue never waits for the stream.
#include <NvInferRuntime.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "segdeploy/densecrf.h"

namespace segdeploy::trt {
namespace {

using namespace nvinfer1;

constexpr char kName[] = "DenseCRF";
constexpr char kVersion[] = "1";
constexpr char kNamespace[] = "";

std::atomic<ILoggerFinder*> logger_finder{nullptr};  // given by TensorRT when it loads the library

// Errors go to the logger of the engine or builder that called (stderr when there is none).
void log_error(const char* what) {
  ILoggerFinder* finder = logger_finder.load();
  ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
  const std::string message = std::string("DenseCRF plugin: ") + what;
  if (logger != nullptr) logger->log(ILogger::Severity::kERROR, message.c_str());
  else std::fprintf(stderr, "%s\n", message.c_str());
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

float field_float(const PluginField& field) {
  if (field.type == PluginFieldType::kFLOAT64) return float(*static_cast<const double*>(field.data));
  return *static_cast<const float*>(field.data);
}

int32_t field_int(const PluginField& field) {
  if (field.type == PluginFieldType::kINT64) return int32_t(*static_cast<const int64_t*>(field.data));
  return *static_cast<const int32_t*>(field.data);
}

Attributes parse(const PluginFieldCollection* fields) {
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
    for (const FloatField& f : floats)
      if (std::strcmp(field.name, f.name) == 0) *f.target = field_float(field);
    if (std::strcmp(field.name, "iterations") == 0) a.params.iterations = field_int(field);
    const std::string text(static_cast<const char*>(field.data), field.type == PluginFieldType::kCHAR ? field.length : 0);
    if (std::strcmp(field.name, "normalization") == 0) a.normalization = text.c_str();  // drops a trailing NUL
    if (std::strcmp(field.name, "unary_kind") == 0) a.unary_kind = text.c_str();
  }
  a.params.normalization = a.normalization == "after" ? SD_CRF_NORMALIZE_AFTER : SD_CRF_NORMALIZE_SYMMETRIC;
  return a;
}

class DenseCrfPlugin : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
 public:
  explicit DenseCrfPlugin(Attributes attributes) : a_(std::move(attributes)) { describe_fields(); }
  DenseCrfPlugin(const DenseCrfPlugin& other) : a_(other.a_) { describe_fields(); }

  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    if (type == PluginCapabilityType::kBUILD) return static_cast<IPluginV3OneBuild*>(this);
    if (type == PluginCapabilityType::kRUNTIME) return static_cast<IPluginV3OneRuntime*>(this);
    return static_cast<IPluginV3OneCore*>(this);
  }

  IPluginV3* clone() noexcept override {
    try {
      return new DenseCrfPlugin(*this);
    } catch (const std::exception&) {
      return nullptr;
    }
  }

  AsciiChar const* getPluginName() const noexcept override { return kName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

  int32_t getNbOutputs() const noexcept override { return 2; }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*,
                          int32_t nbOutputs) noexcept override {
    if (nbInputs != 2 || nbOutputs != 2 || in[0].desc.dims.nbDims != 4 || in[1].desc.dims.nbDims != 4) return -1;
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != 2 || nbOutputs != 2 || inOut[pos].desc.format != PluginFormat::kLINEAR) return false;
    const DataType type = inOut[pos].desc.type;
    switch (pos) {
      case 0: return type == DataType::kFLOAT || type == DataType::kHALF;
      case 1: return type == DataType::kUINT8;
      case 2: return type == DataType::kFLOAT;
      default: return type == DataType::kINT32;
    }
  }

  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const*, int32_t) const noexcept override {
    if (nbOutputs != 2) return -1;
    outputTypes[0] = DataType::kFLOAT;
    outputTypes[1] = DataType::kINT32;
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
                          int32_t nbOutputs, IExprBuilder&) noexcept override {
    if (nbInputs != 2 || nbOutputs != 2 || inputs[0].nbDims != 4) return -1;
    outputs[0] = inputs[0];
    outputs[1].nbDims = 3;
    outputs[1].d[0] = inputs[0].d[0];
    outputs[1].d[1] = inputs[0].d[2];
    outputs[1].d[2] = inputs[0].d[3];
    return 0;
  }

  size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    const Dims& largest = inputs[0].max;
    size_t bytes = 0;
    if (sd_crf_cuda_workspace_bytes(int32_t(largest.d[1]), int32_t(largest.d[2]), int32_t(largest.d[3]), &bytes) != SD_OK)
      log_error(sd_last_error());
    return bytes;
  }

  int32_t onShapeChange(PluginTensorDesc const*, int32_t, PluginTensorDesc const*, int32_t) noexcept override { return 0; }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
    const Dims& logits = inputDesc[0].dims;
    const Dims& image = inputDesc[1].dims;
    sd_crf_io io{};
    io.unary = inputs[0];
    io.unary_dtype = inputDesc[0].type == DataType::kHALF ? SD_DTYPE_FLOAT16 : SD_DTYPE_FLOAT32;
    io.unary_kind = unary_kind_code(a_.unary_kind);
    io.image = static_cast<const uint8_t*>(inputs[1]);
    io.batch = int32_t(logits.d[0]);
    io.classes = int32_t(logits.d[1]);
    io.height = int32_t(logits.d[2]);
    io.width = int32_t(logits.d[3]);
    const bool hwc = image.d[3] == 3 && image.d[1] == logits.d[2] && image.d[2] == logits.d[3];
    io.image_layout = hwc ? SD_IMAGE_HWC : SD_IMAGE_CHW;
    io.probabilities = static_cast<float*>(outputs[0]);
    io.labels = static_cast<int32_t*>(outputs[1]);
    size_t bytes = 0;
    int status = sd_crf_cuda_workspace_bytes(io.classes, io.height, io.width, &bytes);
    if (status == SD_OK) status = sd_crf_cuda(&a_.params, &io, workspace, bytes, /*check_finite=*/0, stream);
    if (status != SD_OK) log_error(sd_last_error());
    return status == SD_OK ? 0 : -1;
  }

  IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &serialized_; }

 private:
  void describe_fields() {
    const sd_crf_params& p = a_.params;
    fields_ = {PluginField("spatial_weight", &p.spatial_weight, PluginFieldType::kFLOAT32, 1),
               PluginField("spatial_theta", &p.spatial_theta, PluginFieldType::kFLOAT32, 1),
               PluginField("bilateral_weight", &p.bilateral_weight, PluginFieldType::kFLOAT32, 1),
               PluginField("bilateral_theta_xy", &p.bilateral_theta_xy, PluginFieldType::kFLOAT32, 1),
               PluginField("bilateral_theta_rgb", &p.bilateral_theta_rgb, PluginFieldType::kFLOAT32, 1),
               PluginField("iterations", &p.iterations, PluginFieldType::kINT32, 1),
               PluginField("normalization", a_.normalization.c_str(), PluginFieldType::kCHAR,
                           int32_t(a_.normalization.size())),
               PluginField("unary_kind", a_.unary_kind.c_str(), PluginFieldType::kCHAR, int32_t(a_.unary_kind.size()))};
    serialized_.nbFields = int32_t(fields_.size());
    serialized_.fields = fields_.data();
  }

  Attributes a_;
  std::vector<PluginField> fields_;
  PluginFieldCollection serialized_{};
};

class DenseCrfPluginCreator : public IPluginCreatorV3One {
 public:
  DenseCrfPluginCreator() {
    for (const char* name : {"spatial_weight", "spatial_theta", "bilateral_weight", "bilateral_theta_xy",
                             "bilateral_theta_rgb"})
      fields_.emplace_back(name, nullptr, PluginFieldType::kFLOAT32, 1);
    fields_.emplace_back("iterations", nullptr, PluginFieldType::kINT32, 1);
    fields_.emplace_back("normalization", nullptr, PluginFieldType::kCHAR, 0);
    fields_.emplace_back("unary_kind", nullptr, PluginFieldType::kCHAR, 0);
    names_.nbFields = int32_t(fields_.size());
    names_.fields = fields_.data();
  }

  AsciiChar const* getPluginName() const noexcept override { return kName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }
  PluginFieldCollection const* getFieldNames() noexcept override { return &names_; }

  IPluginV3* createPlugin(AsciiChar const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
    try {
      Attributes attributes = parse(fc);
      // Reject what the kernel would reject, at build time rather than at the first enqueue.
      const sd_crf_io probe{reinterpret_cast<const void*>(1), SD_DTYPE_FLOAT32, unary_kind_code(attributes.unary_kind),
                            reinterpret_cast<const uint8_t*>(1), SD_IMAGE_HWC, 1, 1, 1, 1,
                            reinterpret_cast<float*>(1), nullptr};
      if (sd_crf_validate(&attributes.params, &probe) != SD_OK) {
        log_error(sd_last_error());
        return nullptr;
      }
      return new DenseCrfPlugin(std::move(attributes));
    } catch (const std::exception& error) {
      log_error(error.what());
      return nullptr;
    }
  }

 private:
  std::vector<PluginField> fields_;
  PluginFieldCollection names_{};
};

}  // namespace
}  // namespace segdeploy::trt

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { segdeploy::trt::logger_finder.store(finder); }

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static segdeploy::trt::DenseCrfPluginCreator creator;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
  nbCreators = 1;
  return creators;
}
