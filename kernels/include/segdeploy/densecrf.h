/* segdeploy kernels: fully-connected CRF (dense CRF) inference.
 *
 * Mean-field inference of Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with
 * Gaussian Edge Potentials" (NIPS 2011), as DeepLab v1/v2 use it: a spatial Gaussian kernel
 * (position, θγ) and a bilateral kernel (position θα, RGB θβ), Potts compatibility, filtering on
 * the permutohedral lattice. It reproduces pydensecrf (NORMALIZE_SYMMETRIC / NORMALIZE_AFTER).
 *
 * Unary convention: the energy is U = -log P. The input may be logits (U = -logits up to a
 * per-pixel constant), probabilities (U = -log p) or U itself. Each iteration computes
 *   Q_i(l) ∝ exp(-U_i(l) + Σ_kernels w · n_i Σ_j k(f_i, f_j) m_j Q_j(l))
 * where (m, n) are the kernel's normalisation factors. Zero iterations return softmax(-U).
 *
 * Tensors are C-contiguous: unary (batch, classes, height, width) float32 or float16; image
 * uint8 (batch, height, width, 3) or (batch, 3, height, width); probabilities float32
 * (batch, classes, height, width); labels int32 (batch, height, width). */
#ifndef SEGDEPLOY_DENSECRF_H
#define SEGDEPLOY_DENSECRF_H

#include <stddef.h>
#include <stdint.h>

#include "segdeploy/dtype.h"
#include "segdeploy/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sd_crf_unary_kind {
  SD_CRF_UNARY_LOGITS = 0,        /* network scores; U = -logits */
  SD_CRF_UNARY_PROBABILITIES = 1, /* p >= 0 per class; U = -log p (p clamped to >= 1e-30) */
  SD_CRF_UNARY_NEG_LOG_PROB = 2   /* U itself, as pydensecrf's setUnaryEnergy takes it */
} sd_crf_unary_kind;

typedef enum sd_crf_normalization {
  SD_CRF_NORMALIZE_SYMMETRIC = 0, /* pydensecrf NORMALIZE_SYMMETRIC (its default) */
  SD_CRF_NORMALIZE_AFTER = 1      /* pydensecrf NORMALIZE_AFTER */
} sd_crf_normalization;

typedef enum sd_image_layout {
  SD_IMAGE_HWC = 0, /* (batch, height, width, 3) */
  SD_IMAGE_CHW = 1  /* (batch, 3, height, width) */
} sd_image_layout;

typedef struct sd_crf_params {
  float spatial_weight;      /* w of the spatial kernel (0 disables it) */
  float spatial_theta;       /* θγ in pixels, > 0 */
  float bilateral_weight;    /* w of the bilateral kernel (0 disables it) */
  float bilateral_theta_xy;  /* θα in pixels, > 0 */
  float bilateral_theta_rgb; /* θβ in intensity levels, > 0 */
  int32_t iterations;        /* mean-field iterations, >= 0 */
  int32_t normalization;     /* sd_crf_normalization */
} sd_crf_params;

/* Inputs and outputs of one call. At least one of probabilities and labels must be given. */
typedef struct sd_crf_io {
  const void* unary;
  int32_t unary_dtype; /* sd_dtype */
  int32_t unary_kind;  /* sd_crf_unary_kind */
  const uint8_t* image;
  int32_t image_layout; /* sd_image_layout */
  int32_t batch;
  int32_t classes;
  int32_t height;
  int32_t width;
  float* probabilities; /* may be NULL */
  int32_t* labels;      /* may be NULL */
} sd_crf_io;

/* DeepLab v2's setting: spatial 3/3, bilateral 4/67/3, 10 iterations, symmetric normalisation. */
SD_API void sd_crf_default_params(sd_crf_params* params);

/* Checks params and the shape/dtype/layout fields of io (not the data); SD_OK or the error. */
SD_API int sd_crf_validate(const sd_crf_params* params, const sd_crf_io* io);

/* CPU inference on host memory, on num_threads threads (0: every core the process may use). A
 * non-finite unary value is reported as SD_ERROR_INVALID_ARGUMENT. The calling thread keeps its
 * scratch memory (and the spatial lattice of the last image size) for its next call; it is freed
 * when the thread ends. Thread-safe: concurrent calls from different threads are independent. */
SD_API int sd_crf_cpu(const sd_crf_params* params, const sd_crf_io* io, int num_threads);

/* Bytes of device workspace sd_crf_cuda needs for images of this size (any batch, any params, any
 * image: it holds the worst case, every lattice entry its own vertex, which a noise image nearly
 * reaches; 393 MiB at 512x512 with 21 classes). Allocate it once and reuse it for every call of
 * that size on one stream at a time. */
SD_API int sd_crf_cuda_workspace_bytes(int32_t classes, int32_t height, int32_t width, size_t* bytes);

/* CUDA inference on device memory, enqueued on `stream` (a cudaStream_t; NULL: the default
 * stream) of the current device; it returns without waiting for the result. With
 * check_finite != 0 the unary is first checked for NaN/inf, which waits for the stream once,
 * before the iterations; with check_finite == 0 nothing waits, and an image with a non-finite
 * unary gets NaN probabilities and label -1. At most 256 classes, and (6 x height x width + 1) x
 * max(classes, 6) below 2^31 (1080p with up to 172 classes).
 * A call made again with the same arguments (pointers included, as with a video's frames in the
 * same buffers) is captured into a CUDA graph and later replayed as one launch (the last 8
 * such calls are kept); the data in the buffers may change between calls. Calls on a stream
 * that is being captured enqueue their kernels into the caller's graph instead.
 * The spatial kernel's work runs beside the bilateral kernel's, on a stream of the library's (one
 * per host thread and device, released when the thread ends) that waits for `stream` at the start
 * and that `stream` waits for at the end: the call is ordered on `stream` as if it ran there
 * alone. On a stream that is being captured, and with SD_CRF_PROFILE set, all of it runs on
 * `stream`. */
SD_API int sd_crf_cuda(const sd_crf_params* params, const sd_crf_io* io, void* workspace, size_t workspace_bytes,
                       int check_finite, void* stream);

#ifdef __cplusplus
}
#endif

#endif
