// CUDA kernels of spatial_softmax_pool (Eqs. 2-3), the fallback beside the Triton kernels.
// forward: block (frame m, D tile of 128); the K x L softmax is recomputed into shared memory,
// then each thread pools one channel d for all K heads.
// backward: same grid; each thread writes d_feats[:, d] and adds its share of
// d_attn = g_pooled feats^T into an accumulator (warp sums, one atomic per warp); a second
// kernel, one thread per (frame, head), applies the softmax backward.
#include <torch/library.h>

#include "../common.h"
#include "cuda_common.cuh"

namespace stafast {
namespace {

template <typename scalar_t, typename acc_t>
__device__ void softmax_to_shared(const scalar_t* logits, acc_t* attn, int64_t m, int K, int L) {
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const scalar_t* e = logits + (m * K + k) * L;
    acc_t mx = static_cast<acc_t>(e[0]);
    for (int l = 1; l < L; ++l) mx = max(mx, static_cast<acc_t>(e[l]));
    acc_t sum = 0;
    for (int l = 0; l < L; ++l) sum += (attn[k * L + l] = exp(static_cast<acc_t>(e[l]) - mx));
    for (int l = 0; l < L; ++l) attn[k * L + l] /= sum;
  }
  __syncthreads();
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ logits, const scalar_t* __restrict__ feats,
                               scalar_t* __restrict__ pooled, scalar_t* __restrict__ attn_out, int K, int L, int64_t D) {
  extern __shared__ unsigned char smem[];
  acc_t* attn = reinterpret_cast<acc_t*>(smem);
  const int64_t m = blockIdx.x;
  softmax_to_shared(logits, attn, m, K, L);
  if (blockIdx.y == 0)
    for (int i = threadIdx.x; i < K * L; i += blockDim.x) attn_out[m * K * L + i] = static_cast<scalar_t>(attn[i]);
  const int64_t d = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (d >= D) return;
  for (int k = 0; k < K; ++k) {
    acc_t acc = 0;
    for (int l = 0; l < L; ++l) acc += attn[k * L + l] * static_cast<acc_t>(feats[(m * L + l) * D + d]);
    pooled[(m * K + k) * D + d] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_tile_kernel(const scalar_t* __restrict__ grad_pooled, const scalar_t* __restrict__ logits,
                                     const scalar_t* __restrict__ feats, scalar_t* __restrict__ grad_feats,
                                     acc_t* __restrict__ d_attn, int K, int L, int64_t D) {
  extern __shared__ unsigned char smem[];
  acc_t* attn = reinterpret_cast<acc_t*>(smem);
  const int64_t m = blockIdx.x;
  softmax_to_shared(logits, attn, m, K, L);
  const int64_t d = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  const bool valid = d < D;
  for (int l = 0; l < L; ++l) {
    const acc_t f = valid ? static_cast<acc_t>(feats[(m * L + l) * D + d]) : acc_t(0);
    acc_t gf = 0;
    for (int k = 0; k < K; ++k) {
      const acc_t g = valid ? static_cast<acc_t>(grad_pooled[(m * K + k) * D + d]) : acc_t(0);
      gf += attn[k * L + l] * g;
      const acc_t part = warp_sum(g * f);
      if ((threadIdx.x & 31) == 0) atomicAdd(d_attn + (m * K + k) * L + l, part);
    }
    if (valid) grad_feats[(m * L + l) * D + d] = static_cast<scalar_t>(gf);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_softmax_kernel(const scalar_t* __restrict__ grad_attn, const scalar_t* __restrict__ logits,
                                        const acc_t* __restrict__ d_attn, scalar_t* __restrict__ grad_logits,
                                        int64_t rows, int L) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  const scalar_t* e = logits + row * L;
  acc_t mx = static_cast<acc_t>(e[0]);
  for (int l = 1; l < L; ++l) mx = max(mx, static_cast<acc_t>(e[l]));
  acc_t sum = 0;
  for (int l = 0; l < L; ++l) sum += exp(static_cast<acc_t>(e[l]) - mx);
  acc_t inner = 0;
  for (int l = 0; l < L; ++l) {
    const acc_t a = exp(static_cast<acc_t>(e[l]) - mx) / sum;
    inner += a * (d_attn[row * L + l] + static_cast<acc_t>(grad_attn[row * L + l]));
  }
  for (int l = 0; l < L; ++l) {
    const acc_t a = exp(static_cast<acc_t>(e[l]) - mx) / sum;
    grad_logits[row * L + l] =
        static_cast<scalar_t>(a * (d_attn[row * L + l] + static_cast<acc_t>(grad_attn[row * L + l]) - inner));
  }
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& logits_in, const at::Tensor& feats_in) {
  check_input(logits_in, "logits", 3);
  check_input(feats_in, "feats", 3);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto logits = logits_in.contiguous();
  const auto feats = feats_in.to(logits.scalar_type()).contiguous();
  const int64_t M = logits.size(0), D = feats.size(2);
  const int K = logits.size(1), L = logits.size(2);
  auto pooled = at::empty({M, K, D}, logits.options());
  auto attn = at::empty_like(logits);
  const dim3 grid(M, cdiv(D, kThreads));
  STAFAST_DISPATCH(logits.scalar_type(), "spatial_softmax_pool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<grid, kThreads, K * L * sizeof(acc_t), c10::cuda::getCurrentCUDAStream()>>>(
        logits.data_ptr<scalar_t>(), feats.data_ptr<scalar_t>(), pooled.data_ptr<scalar_t>(),
        attn.data_ptr<scalar_t>(), K, L, D);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {pooled.to(feats_in.scalar_type()), attn};
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_pooled_in, const at::Tensor& grad_attn_in,
                                            const at::Tensor& logits_in, const at::Tensor& feats_in) {
  check_input(logits_in, "logits", 3);
  check_input(feats_in, "feats", 3);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto logits = logits_in.contiguous();
  const auto dtype = logits.scalar_type();
  const auto feats = feats_in.to(dtype).contiguous();
  const auto grad_pooled = grad_pooled_in.to(dtype).contiguous();
  const auto grad_attn = grad_attn_in.to(dtype).contiguous();
  const int64_t M = logits.size(0), D = feats.size(2);
  const int K = logits.size(1), L = logits.size(2);
  auto grad_logits = at::empty_like(logits);
  auto grad_feats = at::empty_like(feats);
  const auto acc_type = dtype == at::kDouble ? at::kDouble : at::kFloat;
  auto d_attn = at::zeros({M, K, L}, logits.options().dtype(acc_type));
  const dim3 grid(M, cdiv(D, kThreads));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  STAFAST_DISPATCH(dtype, "spatial_softmax_pool_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_tile_kernel<scalar_t, acc_t><<<grid, kThreads, K * L * sizeof(acc_t), stream>>>(
        grad_pooled.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(), feats.data_ptr<scalar_t>(),
        grad_feats.data_ptr<scalar_t>(), d_attn.data_ptr<acc_t>(), K, L, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_softmax_kernel<scalar_t, acc_t><<<cdiv(M * K, kThreads), kThreads, 0, stream>>>(
        grad_attn.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(), d_attn.data_ptr<acc_t>(),
        grad_logits.data_ptr<scalar_t>(), M * K, L);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_logits, grad_feats.to(feats_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(stafast_ext, CUDA, m) {
  m.impl("spatial_softmax_pool", &forward);
  m.impl("spatial_softmax_pool_backward", &backward);
}

}  // namespace stafast
