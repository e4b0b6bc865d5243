// What the plugins of libsegdeploy_trt_plugin share: the library's logging (TensorRT's logger,
// found through the ILoggerFinder that TensorRT hands to setLoggerFinder), the parsing of
// attribute fields as TensorRT's ONNX parser passes them, the IPluginV3 and creator boilerplate
// (PluginV3, PluginCreator), and each plugin's creator, which plugin_library.cpp lists in
// getCreators.
#ifndef SEGDEPLOY_TRT_PLUGIN_SUPPORT_H
#define SEGDEPLOY_TRT_PLUGIN_SUPPORT_H

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace segdeploy::trt {

// Logs "<plugin> plugin: <what>" as an error to the logger of the engine or builder that called
// (stderr when there is none).
void log_error(const char* plugin, const std::string& what);

// Logs a failed CUDA call; true when it succeeded.
bool cuda_ok(const char* plugin, cudaError_t result, const char* what);

// Elements of a tensor of these dims, or 0 when one is unknown (-1).
size_t volume(const nvinfer1::Dims& dims);

// Attribute fields. TensorRT's ONNX parser (loadFields) gives floats as kFLOAT32, ints as kINT32
// and strings as kCHAR with their NUL; a plugin's own getFieldsToSerialize may give them without.
// Each returns false and sets *error for a field of a wrong type or length.
std::string field_error(const nvinfer1::PluginField& field, const char* expected);
bool field_float(const nvinfer1::PluginField& field, float* value, std::string* error);
bool field_int(const nvinfer1::PluginField& field, int32_t* value, std::string* error);
bool field_text(const nvinfer1::PluginField& field, std::string* value, std::string* error);
// Exactly `count` ints (an ONNX ints attribute: kINT32, or kINT64 narrowed).
bool field_ints(const nvinfer1::PluginField& field, int32_t* values, int32_t count, std::string* error);

// What names a plugin in TensorRT's plugin registry.
struct PluginId {
  const char* name;
  const char* version;
  const char* name_space;
};

// The part of an IPluginV3 that implements TensorRT's core, build and runtime capabilities
// (IPluginV3One*) that is the same for every plugin: the capability lookup, clone (Plugin's copy
// constructor), the names (Plugin::kId), the outputs' count and types, the formats (linear tensors
// only, of the types Plugin::takes_tensor allows), attachToContext (a clone: the plugins keep no
// per-context resources), onShapeChange (nothing to redo) and getFieldsToSerialize, which lists
// Plugin::serialized_fields() (PluginFields that point into the plugin's attributes). Plugin (CRTP)
// derives from it and implements the rest.
//
// The types are fixed by default: Plugin::kInputs inputs of the types Plugin::takes_input allows,
// outputs of Plugin::kOutputTypes whatever the inputs' types. A plugin whose input count or output
// types vary hides the four static defaults below (takes_input_count, output_count, output_types,
// takes_tensor) with its own.
template <typename Plugin>
class PluginV3 : public nvinfer1::IPluginV3,
                 public nvinfer1::IPluginV3OneCore,
                 public nvinfer1::IPluginV3OneBuild,
                 public nvinfer1::IPluginV3OneRuntime {
 public:
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override {
    switch (type) {
      case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
      case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
      case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;  // a capability of a later TensorRT that the plugins do not implement
  }

  nvinfer1::IPluginV3* clone() noexcept override {
    try {
      return new Plugin(static_cast<const Plugin&>(*this));
    } catch (const std::exception&) {
      return nullptr;
    }
  }

  nvinfer1::AsciiChar const* getPluginName() const noexcept override { return Plugin::kId.name; }
  nvinfer1::AsciiChar const* getPluginVersion() const noexcept override { return Plugin::kId.version; }
  nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override { return Plugin::kId.name_space; }

  int32_t getNbOutputs() const noexcept override { return Plugin::output_count(); }

  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (!Plugin::takes_input_count(nbInputs) || nbOutputs != getNbOutputs()) return -1;
    return Plugin::output_types(outputTypes, inputTypes) ? 0 : -1;
  }

  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (!Plugin::takes_input_count(nbInputs) || nbOutputs != getNbOutputs()) return false;
    if (inOut[pos].desc.format != nvinfer1::PluginFormat::kLINEAR) return false;
    return Plugin::takes_tensor(pos, inOut, nbInputs);
  }

  // The fixed types' defaults (static, so that only those a plugin does not hide are instantiated).
  static bool takes_input_count(int32_t nbInputs) { return nbInputs == Plugin::kInputs; }
  static int32_t output_count() { return int32_t(std::size(Plugin::kOutputTypes)); }
  static bool output_types(nvinfer1::DataType* outputTypes, nvinfer1::DataType const*) {
    std::copy(std::begin(Plugin::kOutputTypes), std::end(Plugin::kOutputTypes), outputTypes);
    return true;
  }
  // Whether tensor `pos` (inputs first, then outputs) may have its type in inOut; TensorRT has
  // chosen the types of the tensors before it.
  static bool takes_tensor(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs) {
    const nvinfer1::DataType type = inOut[pos].desc.type;
    return pos < nbInputs ? Plugin::takes_input(pos, type) : type == Plugin::kOutputTypes[pos - nbInputs];
  }

  int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
                        int32_t) noexcept override {
    return 0;
  }

  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }

  // Valid until the next call or the plugin's end (TensorRT copies the fields when it serializes).
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    try {
      fields_ = static_cast<const Plugin&>(*this).serialized_fields();
    } catch (const std::exception&) {
      return nullptr;
    }
    serialized_.nbFields = int32_t(fields_.size());
    serialized_.fields = fields_.data();
    return &serialized_;
  }

 protected:
  PluginV3() = default;
  PluginV3(const PluginV3&) : PluginV3() {}  // a copy lists its own fields
  PluginV3& operator=(const PluginV3&) = delete;

 private:
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection serialized_{};
};

// The creator of Plugin (a PluginV3 constructed from its Attributes): the names, the attribute
// fields it takes (those that Plugin serializes: names and types, no data, strings of any
// length), and createPlugin, which parses the fields with `parse` (false: *error logged), lets
// `accept` refuse the attributes (it logs why) and constructs the plugin; an exception is logged
// and gives no plugin.
template <typename Plugin, typename Attributes>
class PluginCreator : public nvinfer1::IPluginCreatorV3One {
 public:
  using Parse = bool (*)(const nvinfer1::PluginFieldCollection* fields, Attributes* out, std::string* error);
  using Accept = bool (*)(const Attributes& attributes);

  PluginCreator(Parse parse, Accept accept)
      : fields_(Plugin(Attributes()).serialized_fields()), parse_(parse), accept_(accept) {
    for (nvinfer1::PluginField& field : fields_) {
      field.data = nullptr;
      if (field.type == nvinfer1::PluginFieldType::kCHAR) field.length = 0;
    }
    names_.nbFields = int32_t(fields_.size());
    names_.fields = fields_.data();
  }

  nvinfer1::AsciiChar const* getPluginName() const noexcept override { return Plugin::kId.name; }
  nvinfer1::AsciiChar const* getPluginVersion() const noexcept override { return Plugin::kId.version; }
  nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override { return Plugin::kId.name_space; }
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &names_; }

  nvinfer1::IPluginV3* createPlugin(nvinfer1::AsciiChar const*, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase) noexcept override {
    try {
      Attributes attributes;
      std::string error;
      if (!parse_(fc, &attributes, &error)) {
        log_error(Plugin::kId.name, error);
        return nullptr;
      }
      if (!accept_(attributes)) return nullptr;
      return new Plugin(std::move(attributes));
    } catch (const std::exception& error) {
      log_error(Plugin::kId.name, error.what());
      return nullptr;
    }
  }

 private:
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection names_{};
  Parse parse_;
  Accept accept_;
};

// The creators, one static instance each (defined beside their plugins).
nvinfer1::IPluginCreatorInterface* dense_crf_creator();
nvinfer1::IPluginCreatorInterface* upsample_argmax_creator();
nvinfer1::IPluginCreatorInterface* depthwise_conv_creator();

}  // namespace segdeploy::trt

#endif
