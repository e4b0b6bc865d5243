// Error reporting behind the C ABI. Errors travel as return values, never as C++ exceptions:
// the library runs inside hosts (Python builds among them) whose unwinder may not be the one the
// library was built against, and a throw there can crash the process.
#ifndef SEGDEPLOY_STATUS_INTERNAL_H
#define SEGDEPLOY_STATUS_INTERNAL_H

#include <sstream>
#include <string>
#include <utility>

#include "segdeploy/status.h"

namespace segdeploy {

void set_last_error(const std::string& message);

// The outcome of an operation: success, or a status with a message naming the cause.
class [[nodiscard]] Error {
 public:
  Error() = default;
  Error(sd_status status, std::string message) : status_(status), message_(std::move(message)) {}
  explicit operator bool() const { return status_ != SD_OK; }
  sd_status status() const { return status_; }
  const std::string& message() const { return message_; }

 private:
  sd_status status_ = SD_OK;
  std::string message_;
};

// Builds an error from streamable parts: invalid("classes must be >= 1, got ", n).
template <typename... Parts>
Error error(sd_status status, const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  return Error(status, message.str());
}
template <typename... Parts>
Error invalid(const Parts&... parts) {
  return error(SD_ERROR_INVALID_ARGUMENT, parts...);
}
inline Error out_of_host_memory() { return Error(SD_ERROR_OUT_OF_MEMORY, "out of host memory"); }

#define SD_RETURN_IF_ERROR(expression)                      \
  do {                                                      \
    if (::segdeploy::Error sd_error_ = (expression)) return sd_error_; \
  } while (0)

// The C ABI boundary: records the outcome of body() for sd_last_error() and returns its status.
// The library throws nothing itself; the catch only guards against the standard library doing
// so (a failed allocation while formatting a message, a thread that cannot be started).
template <typename Body>
int report(Body&& body) noexcept {
  try {
    const Error outcome = body();
    set_last_error(outcome.message());
    return outcome.status();
  } catch (...) {
    set_last_error("internal error: the standard library raised an exception (out of memory?)");
    return SD_ERROR_INTERNAL;
  }
}

}  // namespace segdeploy

#endif
