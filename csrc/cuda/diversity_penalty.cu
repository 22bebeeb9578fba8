// CUDA kernels of diversity_penalty (Eq. 9 Hellinger Q, Eq. 10 Q'), for any K and L: no frame is
// held whole in shared memory.
// gram:     block per frame; each warp takes pairs (i, j) of heads and reduces r_i . r_j over L
//           (R = sqrt(S), or S), giving E = R R^T - I; forward sums E^2 into Q, backward writes E to a
//           (M, K, K) workspace.
// backward: one thread per element (frame, k, l): g * 2 (E R)[k, l] / R[k, l] (Hellinger, 0 where
//           S <= 0) or g * 4 (E S)[k, l] (l2), with E R summed over the K heads from the workspace.
#include <torch/library.h>

#include "../common.h"
#include "cuda_common.cuh"

namespace stafast {
namespace {

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t r_of(const scalar_t* s, bool hellinger) {
  const acc_t v = static_cast<acc_t>(*s);
  return hellinger ? (v > 0 ? sqrt(v) : acc_t(0)) : v;
}

// E[i, j] of frame m for pairs p = warp, warp + warps, ...; forward adds E^2 into q[m], backward
// (q == nullptr) writes E into e_out (M, K, K).
template <typename scalar_t, typename acc_t>
__global__ void gram_kernel(const scalar_t* __restrict__ attn, acc_t* __restrict__ q, acc_t* __restrict__ e_out,
                            int K, int L, bool hellinger) {
  __shared__ acc_t partial[kThreads / 32];
  const int64_t m = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, warps = blockDim.x / 32;
  const scalar_t* frame = attn + m * K * L;
  acc_t squares = 0;
  for (int p = warp; p < K * K; p += warps) {
    const int i = p / K, j = p % K;
    acc_t dot = 0;
    for (int l = lane; l < L; l += 32)
      dot += r_of<scalar_t, acc_t>(frame + i * L + l, hellinger) * r_of<scalar_t, acc_t>(frame + j * L + l, hellinger);
    const acc_t e = warp_sum(dot) - (i == j ? acc_t(1) : acc_t(0));
    if (lane == 0) {
      if (q != nullptr) squares += e * e;
      else e_out[m * K * K + p] = e;
    }
  }
  if (q == nullptr) return;
  if (lane == 0) partial[warp] = squares;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t sum = 0;
    for (int w = 0; w < warps; ++w) sum += partial[w];
    q[m] = sum;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const acc_t* __restrict__ grad, const scalar_t* __restrict__ attn,
                                const acc_t* __restrict__ e, scalar_t* __restrict__ grad_attn, int64_t M, int K,
                                int L, bool hellinger) {
  const int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (index >= M * K * L) return;
  const int64_t m = index / (int64_t(K) * L);
  const int k = (index / L) % K, l = index % L;
  const scalar_t* frame = attn + m * K * L;
  acc_t er = 0;
  for (int j = 0; j < K; ++j) er += e[(m * K + k) * K + j] * r_of<scalar_t, acc_t>(frame + j * L + l, hellinger);
  const acc_t s = static_cast<acc_t>(frame[k * L + l]);
  const acc_t out = hellinger ? (s > 0 ? 2 * er / sqrt(s) * grad[m] : acc_t(0)) : 4 * er * grad[m];
  grad_attn[index] = static_cast<scalar_t>(out);
}

at::Tensor forward(const at::Tensor& attn_in, c10::string_view kind) {
  check_diversity_penalty(attn_in);
  const bool hellinger = is_hellinger(std::string(kind));
  const c10::cuda::CUDAGuard guard(attn_in.device());
  const auto attn = attn_in.contiguous();
  const int64_t M = attn.size(0);
  const int K = attn.size(1), L = attn.size(2);
  auto q = at::empty({M}, attn.options().dtype(acc_dtype(attn.scalar_type())));
  STAFAST_DISPATCH(attn.scalar_type(), "diversity_penalty", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch(gram_kernel<scalar_t, acc_t>, M, kThreads, c10::cuda::getCurrentCUDAStream(), attn.data_ptr<scalar_t>(),
           q.data_ptr<acc_t>(), nullptr, K, L, hellinger);
  });
  return q;
}

at::Tensor backward(const at::Tensor& grad_in, const at::Tensor& attn_in, c10::string_view kind) {
  check_diversity_penalty_backward(grad_in, attn_in);
  const bool hellinger = is_hellinger(std::string(kind));
  const c10::cuda::CUDAGuard guard(attn_in.device());
  const auto attn = attn_in.contiguous();
  const auto acc = acc_dtype(attn.scalar_type());
  const auto grad = grad_in.to(acc).contiguous();  // the spec's computation dtype
  const int64_t M = attn.size(0);
  const int K = attn.size(1), L = attn.size(2);
  auto grad_attn = at::empty_like(attn);
  auto e = at::empty({M, K, K}, attn.options().dtype(acc));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  STAFAST_DISPATCH(attn.scalar_type(), "diversity_penalty_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch(gram_kernel<scalar_t, acc_t>, M, kThreads, stream, attn.data_ptr<scalar_t>(), nullptr, e.data_ptr<acc_t>(),
           K, L, hellinger);
    launch(backward_kernel<scalar_t, acc_t>, cdiv(M * K * L, kThreads), kThreads, stream, grad.data_ptr<acc_t>(),
           attn.data_ptr<scalar_t>(), e.data_ptr<acc_t>(), grad_attn.data_ptr<scalar_t>(), M, K, L, hellinger);
  });
  return grad_attn;
}

}  // namespace

TORCH_LIBRARY_IMPL(stafast_ext, CUDA, m) {
  m.impl("diversity_penalty", &forward);
  m.impl("diversity_penalty_backward", &backward);
}

}  // namespace stafast
