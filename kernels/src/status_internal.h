// Error reporting behind the C ABI: a thread-local message and a guard that turns every C++
// exception into a status, so that no exception ever crosses the C boundary.
#ifndef SEGDEPLOY_STATUS_INTERNAL_H
#define SEGDEPLOY_STATUS_INTERNAL_H

#include <new>
#include <sstream>
#include <stdexcept>
#include <string>

#include "segdeploy/status.h"

namespace segdeploy {

void set_last_error(const std::string& message);

// Thrown inside the library; the guard turns it into its status and message.
class Failure : public std::runtime_error {
 public:
  Failure(sd_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  sd_status status() const { return status_; }

 private:
  sd_status status_;
};

// Builds a message from streamable parts: fail_invalid("classes must be >= 1, got ", n).
template <typename... Parts>
[[noreturn]] void fail(sd_status status, const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw Failure(status, message.str());
}
template <typename... Parts>
[[noreturn]] void fail_invalid(const Parts&... parts) {
  fail(SD_ERROR_INVALID_ARGUMENT, parts...);
}

// Runs body() and maps its outcome to a status, recording the message for sd_last_error().
template <typename Body>
int guarded(Body&& body) noexcept {
  try {
    set_last_error("");
    body();
    return SD_OK;
  } catch (const Failure& failure) {
    set_last_error(failure.what());
    return failure.status();
  } catch (const std::bad_alloc&) {
    set_last_error("out of host memory");
    return SD_ERROR_OUT_OF_MEMORY;
  } catch (const std::exception& error) {
    set_last_error(std::string("internal error: ") + error.what());
    return SD_ERROR_INTERNAL;
  } catch (...) {
    set_last_error("internal error: unknown exception");
    return SD_ERROR_INTERNAL;
  }
}

}  // namespace segdeploy

#endif
