// The CUDA driver of the depthwise convolution compiled for the host, its kernel run by
// cuda_emulation.h.
#include "cuda_emulation.h"

#include "../conv/depthwise_conv_cuda.cu"
