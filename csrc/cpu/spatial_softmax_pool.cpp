// CPU kernels of spatial_softmax_pool (Eqs. 2-3). Parallel over frames; per frame the softmax is
// recomputed (K x L values) and the products over D run as register-blocked loops (blocked.h).
#include <algorithm>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common.h"
#include "cpu/blocked.h"

namespace stafast {
namespace {

template <typename T>
void softmax_rows(const T* __restrict__ logits, T* __restrict__ attn, int64_t K, int64_t L) {
  for (int64_t k = 0; k < K; ++k) {
    const T* e = logits + k * L;
    T* a = attn + k * L;
    T mx = e[0];
    for (int64_t l = 1; l < L; ++l) mx = std::max(mx, e[l]);
    T sum = 0;
    for (int64_t l = 0; l < L; ++l) sum += (a[l] = std::exp(e[l] - mx));
    const T inv = T(1) / sum;
    for (int64_t l = 0; l < L; ++l) a[l] *= inv;
  }
}

template <typename T>
void forward_kernel(const T* logits, const T* feats, T* pooled, T* attn, int64_t M, int64_t K, int64_t L, int64_t D) {
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      T* a = attn + m * K * L;
      softmax_rows(logits + m * K * L, a, K, L);
      mix_rows(a, L, 1, feats + m * L * D, D, pooled + m * K * D, D, K, L, D);  // attn feats
    }
  });
}

template <typename T>
void backward_kernel(const T* grad_pooled, const T* grad_attn, const T* logits, const T* feats, T* grad_logits,
                     T* grad_feats, int64_t M, int64_t K, int64_t L, int64_t D) {
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> attn(K * L), d_attn(K * L);
    for (int64_t m = begin; m < end; ++m) {
      softmax_rows(logits + m * K * L, attn.data(), K, L);
      const T* gp = grad_pooled + m * K * D;
      const T* f = feats + m * L * D;
      mix_rows(attn.data(), 1, L, gp, D, grad_feats + m * L * D, D, L, K, D);  // attn^T g_pooled
      std::copy_n(grad_attn + m * K * L, K * L, d_attn.data());
      row_dots(gp, f, D, D, d_attn.data(), L, K, L, D);                         // + g_pooled feats^T
      for (int64_t k = 0; k < K; ++k) {  // softmax backward
        T inner = 0;
        for (int64_t l = 0; l < L; ++l) inner += attn[k * L + l] * d_attn[k * L + l];
        for (int64_t l = 0; l < L; ++l)
          grad_logits[(m * K + k) * L + l] = attn[k * L + l] * (d_attn[k * L + l] - inner);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& logits_in, const at::Tensor& feats_in) {
  check_input(logits_in, "logits", 3);
  check_input(feats_in, "feats", 3);
  const auto logits = compute_copy(logits_in);
  const auto feats = compute_copy(feats_in).to(logits.scalar_type());
  const int64_t M = logits.size(0), K = logits.size(1), L = logits.size(2), D = feats.size(2);
  TORCH_CHECK(feats.size(0) == M && feats.size(1) == L, "stafast_ext: feats must be (M, L, D) = (", M, ", ", L,
              ", D), got ", feats.sizes());
  auto pooled = empty_output({M, K, D}, logits.options());
  auto attn = empty_output({M, K, L}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "spatial_softmax_pool", [&] {
    forward_kernel<scalar_t>(logits.data_ptr<scalar_t>(), feats.data_ptr<scalar_t>(), pooled.data_ptr<scalar_t>(),
                             attn.data_ptr<scalar_t>(), M, K, L, D);
  });
  return {pooled.to(feats_in.scalar_type()), attn.to(logits_in.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_pooled_in, const at::Tensor& grad_attn_in,
                                            const at::Tensor& logits_in, const at::Tensor& feats_in) {
  check_input(logits_in, "logits", 3);
  check_input(feats_in, "feats", 3);
  const auto logits = compute_copy(logits_in);
  const auto dtype = logits.scalar_type();
  const auto feats = compute_copy(feats_in).to(dtype);
  const auto grad_pooled = compute_copy(grad_pooled_in).to(dtype);
  const auto grad_attn = compute_copy(grad_attn_in).to(dtype);
  const int64_t M = logits.size(0), K = logits.size(1), L = logits.size(2), D = feats.size(2);
  TORCH_CHECK(grad_pooled.sizes() == at::IntArrayRef({M, K, D}) && grad_attn.sizes() == logits.sizes() &&
                  feats.size(0) == M && feats.size(1) == L,
              "stafast_ext: spatial_softmax_pool_backward got mismatched shapes");
  auto grad_logits = empty_output(logits.sizes(), logits.options());
  auto grad_feats = empty_output(feats.sizes(), feats.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "spatial_softmax_pool_backward", [&] {
    backward_kernel<scalar_t>(grad_pooled.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>(),
                              logits.data_ptr<scalar_t>(), feats.data_ptr<scalar_t>(),
                              grad_logits.data_ptr<scalar_t>(), grad_feats.data_ptr<scalar_t>(), M, K, L, D);
  });
  return {grad_logits.to(logits_in.scalar_type()), grad_feats.to(feats_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(stafast_ext, CPU, m) {
  m.impl("spatial_softmax_pool", &forward);
  m.impl("spatial_softmax_pool_backward", &backward);
}

}  // namespace stafast
