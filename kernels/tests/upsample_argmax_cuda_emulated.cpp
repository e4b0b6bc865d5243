// The CUDA driver of the fused upsample + argmax compiled for the host, its kernel run by
// cuda_emulation.h.
#include "cuda_emulation.h"

#include "../head/upsample_argmax_cuda.cu"
