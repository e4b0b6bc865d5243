/* segdeploy kernels: status codes and error messages shared by every C ABI function.
 *
 * Every fallible function returns an int status (SD_OK on success). On failure a message that
 * names the offending argument is kept per thread and read with sd_last_error(). */
#ifndef SEGDEPLOY_STATUS_H
#define SEGDEPLOY_STATUS_H

#include "segdeploy/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sd_status {
  SD_OK = 0,
  SD_ERROR_INVALID_ARGUMENT = 1, /* a shape, dtype, value or parameter the kernel cannot use */
  SD_ERROR_OUT_OF_MEMORY = 2,    /* host or device allocation failed */
  SD_ERROR_CUDA = 3,             /* the CUDA runtime reported an error (its text is in the message) */
  SD_ERROR_NOT_BUILT = 4,        /* the library was built without the requested backend */
  SD_ERROR_INTERNAL = 5          /* a bug: please report it with the message */
} sd_status;

/* Message of the last failed call made by this thread ("" when it succeeded). The pointer stays
 * valid until this thread's next call into the library. */
SD_API const char* sd_last_error(void);

#ifdef __cplusplus
}
#endif

#endif
