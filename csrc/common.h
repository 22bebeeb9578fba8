// Helpers shared by the CPU and CUDA kernels of the extension.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#ifdef __linux__
#include <sys/mman.h>
#endif

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

// A CPU output the kernel writes in full. glibc maps every allocation over 32 MB afresh, so a
// 50 MB grad_feats costs 12k page faults on first touch, more than the kernel itself. Large
// outputs are therefore advised onto transparent huge pages (2 MB: ~25 faults). The advice only
// changes how the pages are backed (it is ignored where THP is off); STAFAST_THP=0 turns it off.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  auto t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool advise = [] {
    const char* v = std::getenv("STAFAST_THP");
    return v == nullptr || std::string(v) != "0";
  }();
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (advise && t.device().is_cpu() && t.nbytes() >= 2 * kHuge) {
    const auto p = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1), end = (p + t.nbytes()) & ~(kHuge - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#endif
  return t;
}

}  // namespace stafast
