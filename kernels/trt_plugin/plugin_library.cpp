// The entry points of libsegdeploy_trt_plugin that IPluginRegistry::loadLibrary (trtexec
// --dynamicPlugins=...) calls: setLoggerFinder, then getCreators, which lists every plugin's
// creator (DenseCRF, UpsampleArgmax, DepthwiseConv); and what the plugins share (plugin_support.h).
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <string>

#include "plugin_support.h"

namespace segdeploy::trt {
namespace {

using namespace nvinfer1;

std::atomic<ILoggerFinder*> logger_finder{nullptr};  // given by TensorRT when it loads the library

// The field's single number: a Narrow (what the ONNX parser and getFieldsToSerialize give), or a
// Wide (kFLOAT64, kINT64) narrowed.
template <typename Narrow, typename Wide>
bool field_number(const PluginField& field, PluginFieldType narrow, PluginFieldType wide, const char* expected,
                  Narrow* value, std::string* error) {
  if (field.length == 1 && field.type == narrow) {
    *value = *static_cast<const Narrow*>(field.data);
  } else if (field.length == 1 && field.type == wide) {
    *value = Narrow(*static_cast<const Wide*>(field.data));
  } else {
    *error = field_error(field, expected);
    return false;
  }
  return true;
}

}  // namespace

void log_error(const char* plugin, const std::string& what) {
  ILoggerFinder* finder = logger_finder.load();
  ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
  const std::string message = std::string(plugin) + " plugin: " + what;
  if (logger != nullptr) logger->log(ILogger::Severity::kERROR, message.c_str());
  else std::fprintf(stderr, "%s\n", message.c_str());
}

bool cuda_ok(const char* plugin, cudaError_t result, const char* what) {
  if (result == cudaSuccess) return true;
  log_error(plugin, std::string(what) + ": " + cudaGetErrorName(result) + " (" + cudaGetErrorString(result) + ")");
  return false;
}

size_t volume(const Dims& dims) {
  size_t count = 1;
  for (int32_t i = 0; i < dims.nbDims; ++i) {
    if (dims.d[i] < 0) return 0;
    count *= size_t(dims.d[i]);
  }
  return count;
}

std::string field_error(const PluginField& field, const char* expected) {
  return std::string("attribute ") + field.name + ": expected " + expected + ", got PluginFieldType " +
         std::to_string(int(field.type)) + " of length " + std::to_string(field.length);
}

bool field_float(const PluginField& field, float* value, std::string* error) {
  return field_number<float, double>(field, PluginFieldType::kFLOAT32, PluginFieldType::kFLOAT64, "one float", value,
                                     error);
}

bool field_int(const PluginField& field, int32_t* value, std::string* error) {
  return field_number<int32_t, int64_t>(field, PluginFieldType::kINT32, PluginFieldType::kINT64, "one int", value,
                                        error);
}

// The field's text (kCHAR, with or without a trailing NUL: the parser's has one, ours has none).
bool field_text(const PluginField& field, std::string* value, std::string* error) {
  if (field.type != PluginFieldType::kCHAR || field.length < 0) {
    *error = field_error(field, "a string");
    return false;
  }
  *value = std::string(static_cast<const char*>(field.data), size_t(field.length)).c_str();  // up to a NUL
  return true;
}

bool field_ints(const PluginField& field, int32_t* values, int32_t count, std::string* error) {
  if (field.length != count || (field.type != PluginFieldType::kINT32 && field.type != PluginFieldType::kINT64)) {
    *error = field_error(field, (std::to_string(count) + " ints").c_str());
    return false;
  }
  for (int32_t i = 0; i < count; ++i) {
    const int64_t value = field.type == PluginFieldType::kINT32 ? static_cast<const int32_t*>(field.data)[i]
                                                                : static_cast<const int64_t*>(field.data)[i];
    if (value < INT32_MIN || value > INT32_MAX) {
      *error = std::string("attribute ") + field.name + ": " + std::to_string(value) + " does not fit in int32";
      return false;
    }
    values[i] = int32_t(value);
  }
  return true;
}

}  // namespace segdeploy::trt

#define SD_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))

SD_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  segdeploy::trt::logger_finder.store(finder);
}

SD_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static nvinfer1::IPluginCreatorInterface* const creators[] = {segdeploy::trt::dense_crf_creator(),
                                                                segdeploy::trt::upsample_argmax_creator(),
                                                                segdeploy::trt::depthwise_conv_creator()};
  nbCreators = int32_t(sizeof creators / sizeof creators[0]);
  return creators;
}
