/* segdeploy kernels: element types of the tensors the kernels read (shared by every kernel). */
#ifndef SEGDEPLOY_DTYPE_H
#define SEGDEPLOY_DTYPE_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sd_dtype { SD_DTYPE_FLOAT32 = 0, SD_DTYPE_FLOAT16 = 1 } sd_dtype;

#ifdef __cplusplus
}
#endif

#endif
