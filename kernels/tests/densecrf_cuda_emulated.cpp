// The CUDA driver of the dense CRF compiled for the host, its kernels run by cuda_emulation.h.
#include "cuda_emulation.h"

#include "../densecrf/densecrf_cuda.cu"
