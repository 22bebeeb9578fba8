// Helpers shared by the CUDA kernels: accumulate in float (half/bfloat16/float) or double.
// tests/ops/test_cuda_emulated.py compiles these sources for the host against an emulation of CUDA
// (tests/ops/cuda_emu), which defines STAFAST_CUDA_EMULATION and brings its own launch().
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <initializer_list>

namespace stafast {

constexpr int kThreads = 128;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffff, v, offset);
  return v;
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

#ifdef STAFAST_CUDA_EMULATION
using ::cuda_emu::grid_y_limit;
using ::cuda_emu::launch;
#else
// The largest gridDim.y (and z) of every CUDA GPU.
inline unsigned grid_y_limit() { return 65535; }

// Every kernel launch goes through here, checked at once.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args... args) {
  kernel<<<grid, block, 0, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif

// The dtype the kernels read the inputs in. Inputs of one dtype are read as they are (16-bit ones
// accumulate in float32: the spec's computation, since upcasting is exact). Mixed dtypes are first
// converted to the spec's computation dtype (stafast/ops/reference.py, as the CPU twins do): the
// first input's, float32 for 16-bit.
inline at::ScalarType kernel_dtype(std::initializer_list<at::Tensor> inputs) {
  const auto first = inputs.begin()->scalar_type();
  for (const auto& t : inputs)
    if (t.scalar_type() != first) return at::toOpMathType(first);
  return first;
}

inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace stafast

#define STAFAST_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
