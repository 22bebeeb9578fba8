// CUDA kernels of diversity_penalty (Eq. 9 Hellinger Q, Eq. 10 Q'): one block per frame.
// R (K x L) and E = R R^T - I (K x K) are built in shared memory; forward sums E^2, backward
// writes g * 2 (E R) / R (Hellinger, 0 where S <= 0) or g * 4 E S (l2).
#include <torch/library.h>

#include "../common.h"
#include "cuda_common.cuh"

namespace stafast {
namespace {

template <typename scalar_t, typename acc_t>
__device__ void build(const scalar_t* attn, acc_t* r, acc_t* e, int64_t m, int K, int L, bool hellinger) {
  for (int i = threadIdx.x; i < K * L; i += blockDim.x) {
    const acc_t s = static_cast<acc_t>(attn[m * K * L + i]);
    r[i] = hellinger ? (s > 0 ? sqrt(s) : acc_t(0)) : s;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < K * K; p += blockDim.x) {
    const int i = p / K, j = p % K;
    acc_t dot = 0;
    for (int l = 0; l < L; ++l) dot += r[i * L + l] * r[j * L + l];
    e[p] = dot - (i == j ? acc_t(1) : acc_t(0));
  }
  __syncthreads();
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ attn, acc_t* __restrict__ q, int K, int L, bool hellinger) {
  extern __shared__ unsigned char smem[];
  acc_t* r = reinterpret_cast<acc_t*>(smem);
  acc_t* e = r + K * L;
  const int64_t m = blockIdx.x;
  build(attn, r, e, m, K, L, hellinger);
  if (threadIdx.x == 0) {
    acc_t sum = 0;
    for (int p = 0; p < K * K; ++p) sum += e[p] * e[p];
    q[m] = sum;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const acc_t* __restrict__ grad, const scalar_t* __restrict__ attn,
                                scalar_t* __restrict__ grad_attn, int K, int L, bool hellinger) {
  extern __shared__ unsigned char smem[];
  acc_t* r = reinterpret_cast<acc_t*>(smem);
  acc_t* e = r + K * L;
  const int64_t m = blockIdx.x;
  build(attn, r, e, m, K, L, hellinger);
  const acc_t g = grad[m];
  for (int i = threadIdx.x; i < K * L; i += blockDim.x) {
    const int k = i / L, l = i % L;
    acc_t er = 0;
    for (int j = 0; j < K; ++j) er += e[k * K + j] * r[j * L + l];
    const acc_t s = static_cast<acc_t>(attn[m * K * L + i]);
    const acc_t out = hellinger ? (s > 0 ? 2 * er / r[i] * g : acc_t(0)) : 4 * er * g;
    grad_attn[m * K * L + i] = static_cast<scalar_t>(out);
  }
}

at::ScalarType acc_dtype(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor forward(const at::Tensor& attn_in, c10::string_view kind) {
  check_input(attn_in, "attn", 3);
  const bool hellinger = is_hellinger(std::string(kind));
  const c10::cuda::CUDAGuard guard(attn_in.device());
  const auto attn = attn_in.contiguous();
  const int64_t M = attn.size(0);
  const int K = attn.size(1), L = attn.size(2);
  auto q = at::empty({M}, attn.options().dtype(acc_dtype(attn)));
  STAFAST_DISPATCH(attn.scalar_type(), "diversity_penalty", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<M, kThreads, (K * L + K * K) * sizeof(acc_t), c10::cuda::getCurrentCUDAStream()>>>(
        attn.data_ptr<scalar_t>(), q.data_ptr<acc_t>(), K, L, hellinger);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return q;
}

at::Tensor backward(const at::Tensor& grad_in, const at::Tensor& attn_in, c10::string_view kind) {
  check_input(attn_in, "attn", 3);
  const bool hellinger = is_hellinger(std::string(kind));
  const c10::cuda::CUDAGuard guard(attn_in.device());
  const auto attn = attn_in.contiguous();
  const auto grad = grad_in.to(acc_dtype(attn)).contiguous();
  const int64_t M = attn.size(0);
  const int K = attn.size(1), L = attn.size(2);
  auto grad_attn = at::empty_like(attn);
  STAFAST_DISPATCH(attn.scalar_type(), "diversity_penalty_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, acc_t><<<M, kThreads, (K * L + K * K) * sizeof(acc_t), c10::cuda::getCurrentCUDAStream()>>>(
        grad.data_ptr<acc_t>(), attn.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>(), K, L, hellinger);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_attn;
}

}  // namespace

TORCH_LIBRARY_IMPL(stafast_ext, CUDA, m) {
  m.impl("diversity_penalty", &forward);
  m.impl("diversity_penalty_backward", &backward);
}

}  // namespace stafast
