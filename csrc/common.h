// Helpers shared by the CPU and CUDA kernels of the extension.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace stafast {

// The public ops validate shapes and dtypes; these checks guard direct torch.ops.stafast_ext calls.
inline void check_input(const at::Tensor& t, const char* name, int64_t ndim) {
  TORCH_CHECK(t.dim() == ndim, "stafast_ext: ", name, " must have ", ndim, " dims, got shape ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "stafast_ext: ", name, " must be floating point, got ",
              t.scalar_type());
}

inline bool is_hellinger(const std::string& kind) {
  TORCH_CHECK(kind == "hellinger" || kind == "l2", "stafast_ext: kind must be 'hellinger' or 'l2', got '", kind, "'");
  return kind == "hellinger";
}

// 16-bit inputs are computed in float32 (as the reference does) and cast back.
inline bool low_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

inline at::Tensor compute_copy(const at::Tensor& t) {
  return (low_precision(t) ? t.to(at::kFloat) : t).contiguous();
}

// A CPU output the kernel writes in full. Outputs of 4 MB and more come from a cache of freed
// blocks (csrc/output_cache.cpp says why); smaller ones from at::empty.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);
int64_t output_cache_bytes();  // bytes held by the cache now (torch.ops.stafast_ext.output_cache_bytes)
void output_cache_clear();     // frees them (torch.ops.stafast_ext.output_cache_clear)

}  // namespace stafast
