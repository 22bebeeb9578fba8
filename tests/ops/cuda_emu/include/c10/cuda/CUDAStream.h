// cuda_emu stand-in: one host "stream"; launches run to their end before they return.
#pragma once
#include <c10/core/Device.h>

#include "cuda_emu.h"

namespace c10::cuda {
struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace c10::cuda
