#include "status_internal.h"

namespace segdeploy {

namespace {
thread_local std::string last_error;
}

void set_last_error(const std::string& message) { last_error = message; }

}  // namespace segdeploy

extern "C" const char* sd_last_error(void) { return segdeploy::last_error.c_str(); }
