// CPU kernels of diversity_penalty (Eq. 9 Hellinger Q, Eq. 10 Q'). Parallel over frames; the
// K x K Gram matrix of each frame is small and stays in a per-thread buffer.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace stafast {
namespace {

// Frames per task: a frame is only K*K*L/2 multiply-adds, so small batches stay on one thread.
constexpr int64_t kGrain = 128;

// R (K x L) and E = R R^T - I (K x K) of one frame; R = sqrt(S) (0 where S <= 0) or S.
template <typename T>
void gram_minus_identity(const T* s, T* r, T* e, int64_t K, int64_t L, bool hellinger) {
  if (hellinger) {
#pragma omp simd
    for (int64_t i = 0; i < K * L; ++i) r[i] = std::sqrt(std::max(s[i], T(0)));  // branch-free: vectorises
  } else {
    std::copy_n(s, K * L, r);
  }
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      const T* __restrict__ a = r + i * L;
      const T* __restrict__ b = r + j * L;
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t l = 0; l < L; ++l) dot += a[l] * b[l];
      e[i * K + j] = e[j * K + i] = dot - (i == j ? T(1) : T(0));
    }
  }
}

template <typename T>
void forward_kernel(const T* attn, T* q, int64_t M, int64_t K, int64_t L, bool hellinger) {
  at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> r(K * L), e(K * K);
    for (int64_t m = begin; m < end; ++m) {
      gram_minus_identity(attn + m * K * L, r.data(), e.data(), K, L, hellinger);
      T sum = 0;
      for (int64_t i = 0; i < K * K; ++i) sum += e[i] * e[i];
      q[m] = sum;
    }
  });
}

template <typename T>
void backward_kernel(const T* grad, const T* attn, T* grad_attn, int64_t M, int64_t K, int64_t L, bool hellinger) {
  at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> r(K * L), e(K * K), er(L);
    for (int64_t m = begin; m < end; ++m) {
      const T* s = attn + m * K * L;
      gram_minus_identity(s, r.data(), e.data(), K, L, hellinger);
      const T g = grad[m];
      for (int64_t k = 0; k < K; ++k) {
        std::fill(er.begin(), er.end(), T(0));
        for (int64_t j = 0; j < K; ++j) {
          const T w = e[k * K + j];
          const T* __restrict__ rj = r.data() + j * L;
#pragma omp simd
          for (int64_t l = 0; l < L; ++l) er[l] += w * rj[l];
        }
        T* __restrict__ out = grad_attn + (m * K + k) * L;
        const T* __restrict__ sk = s + k * L;
        const T* __restrict__ rk = r.data() + k * L;
        // Hellinger: 2 (E R) / R, and 0 where S <= 0 (see stafast/ops/reference.py); l2: 4 E S.
        if (hellinger) {
#pragma omp simd
          for (int64_t l = 0; l < L; ++l) out[l] = sk[l] > 0 ? 2 * g * er[l] / (sk[l] > 0 ? rk[l] : T(1)) : T(0);
        } else {
#pragma omp simd
          for (int64_t l = 0; l < L; ++l) out[l] = 4 * g * er[l];
        }
      }
    }
  });
}

at::Tensor forward(const at::Tensor& attn_in, c10::string_view kind) {
  check_input(attn_in, "attn", 3);
  const bool hellinger = is_hellinger(std::string(kind));
  const auto attn = compute_copy(attn_in);
  const int64_t M = attn.size(0), K = attn.size(1), L = attn.size(2);
  auto q = at::empty({M}, attn.options());
  AT_DISPATCH_FLOATING_TYPES(attn.scalar_type(), "diversity_penalty", [&] {
    forward_kernel<scalar_t>(attn.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), M, K, L, hellinger);
  });
  return q;  // float32 for 16-bit inputs, like the reference
}

at::Tensor backward(const at::Tensor& grad_in, const at::Tensor& attn_in, c10::string_view kind) {
  check_input(attn_in, "attn", 3);
  const bool hellinger = is_hellinger(std::string(kind));
  const auto attn = compute_copy(attn_in);
  const auto grad = grad_in.to(attn.scalar_type()).contiguous();
  const int64_t M = attn.size(0), K = attn.size(1), L = attn.size(2);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == M, "stafast_ext: grad must be (M,) = (", M, ",), got ", grad.sizes());
  auto grad_attn = at::empty_like(attn);
  AT_DISPATCH_FLOATING_TYPES(attn.scalar_type(), "diversity_penalty_backward", [&] {
    backward_kernel<scalar_t>(grad.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>(),
                              M, K, L, hellinger);
  });
  return grad_attn.to(attn_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(stafast_ext, CPU, m) {
  m.impl("diversity_penalty", &forward);
  m.impl("diversity_penalty_backward", &backward);
}

}  // namespace stafast
