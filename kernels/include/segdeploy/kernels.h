/* segdeploy kernels: C ABI shared by every kernel of the library. */
#ifndef SEGDEPLOY_KERNELS_H
#define SEGDEPLOY_KERNELS_H

#if defined(_WIN32)
#  define SD_API __declspec(dllexport)
#elif defined(SD_BUILDING_LIBRARY)
#  define SD_API __attribute__((visibility("default")))
#else
#  define SD_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Library version as "MAJOR.MINOR.PATCH"; static storage, never freed. */
SD_API const char* sd_version(void);

/* 1 when the library was built with its CUDA kernels, else 0. */
SD_API int sd_built_with_cuda(void);

#ifdef __cplusplus
}
#endif

#endif
