// Helpers shared by the CPU and CUDA kernels of the extension.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <initializer_list>
#include <string>

namespace stafast {

// The public ops validate shapes and dtypes; these checks guard direct torch.ops.stafast_ext calls.
inline void check_input(const at::Tensor& t, const char* name, int64_t ndim) {
  TORCH_CHECK(t.dim() == ndim, "stafast_ext: ", name, " must have ", ndim, " dims, got shape ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "stafast_ext: ", name, " must be floating point, got ",
              t.scalar_type());
}

// Each op's input shapes and devices, checked alike by its CPU and CUDA twins: a direct
// torch.ops.stafast_ext call skips the public op's checks, and a kernel trusts the sizes it is given.
// `letters` names the dims ("MLD" -> "(M, L, D)"); want[i] < 0 leaves dim i free.
inline void check_sizes(const at::Tensor& t, const char* name, const std::string& letters,
                        std::initializer_list<int64_t> want) {
  std::string spec = "(", expected = "(";
  bool ok = t.dim() == int64_t(want.size());
  int64_t i = 0;
  for (const int64_t w : want) {
    const std::string sep = i ? ", " : "";
    spec += sep + letters[i];
    expected += sep + (w < 0 ? std::string(1, letters[i]) : std::to_string(w));
    ok = ok && (w < 0 || t.size(i) == w);
    ++i;
  }
  TORCH_CHECK(ok, "stafast_ext: ", name, " must be ", spec, ") = ", expected, "), got shape ", t.sizes());
}

inline void check_device(const at::Tensor& t, const char* name, const at::Tensor& first, const char* first_name) {
  TORCH_CHECK(t.device() == first.device(), "stafast_ext: ", name, " must be on ", first_name, "'s device ",
              first.device(), ", got ", t.device());
}

inline void check_not_empty(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.numel() > 0, "stafast_ext: ", name, " must not be empty, got shape ", t.sizes());
}

// spatial_softmax_pool: logits (M, K, L), feats (M, L, D); its backward adds grad_pooled (M, K, D)
// and grad_attn (M, K, L).
inline void check_spatial_softmax_pool(const at::Tensor& logits, const at::Tensor& feats) {
  check_input(logits, "logits", 3);
  check_input(feats, "feats", 3);
  check_device(feats, "feats", logits, "logits");
  check_sizes(feats, "feats", "MLD", {logits.size(0), logits.size(2), -1});
  check_not_empty(logits, "logits");
  check_not_empty(feats, "feats");
}

inline void check_spatial_softmax_pool_backward(const at::Tensor& grad_pooled, const at::Tensor& grad_attn,
                                                const at::Tensor& logits, const at::Tensor& feats) {
  check_spatial_softmax_pool(logits, feats);
  check_input(grad_pooled, "grad_pooled", 3);
  check_input(grad_attn, "grad_attn", 3);
  check_device(grad_pooled, "grad_pooled", logits, "logits");
  check_device(grad_attn, "grad_attn", logits, "logits");
  check_sizes(grad_pooled, "grad_pooled", "MKD", {logits.size(0), logits.size(1), feats.size(2)});
  check_sizes(grad_attn, "grad_attn", "MKL", {logits.size(0), logits.size(1), logits.size(2)});
}

// diversity_penalty: attn (M, K, L); its backward adds grad (M,).
inline void check_diversity_penalty(const at::Tensor& attn) {
  check_input(attn, "attn", 3);
  check_not_empty(attn, "attn");
}

inline void check_diversity_penalty_backward(const at::Tensor& grad, const at::Tensor& attn) {
  check_diversity_penalty(attn);
  check_input(grad, "grad", 1);
  check_device(grad, "grad", attn, "attn");
  check_sizes(grad, "grad", "M", {attn.size(0)});
}

// frame_attention: x (B, N, K, D), bias (N, N); its backward adds grad (B, N, K, D).
inline void check_frame_attention(const at::Tensor& x, const at::Tensor& bias) {
  check_input(x, "x", 4);
  check_input(bias, "bias", 2);
  check_device(bias, "bias", x, "x");
  check_sizes(bias, "bias", "NN", {x.size(1), x.size(1)});
  check_not_empty(x, "x");
}

inline void check_frame_attention_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& bias) {
  check_frame_attention(x, bias);
  check_input(grad, "grad", 4);
  check_device(grad, "grad", x, "x");
  check_sizes(grad, "grad", "BNKD", {x.size(0), x.size(1), x.size(2), x.size(3)});
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
