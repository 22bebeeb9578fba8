// CUDA kernels of spatial_softmax_pool (Eqs. 2-3), the fallback beside the Triton kernels, for any
// K and L: nothing per frame is held whole in shared memory.
// stats:    one thread per (frame, head): the row max and 1 / sum of exp over L (Eq. 2's normaliser).
// forward:  block (frame m, 128 channels). Heads go kHeads at a time (accumulators in registers), L
//           kCells at a time: the attention of that tile is staged in shared memory, then each thread
//           pools its channel. feats is read once per kHeads heads.
// backward: same grid. For each tile of kCells cells a thread keeps its channel's feats and
//           grad_feats in registers while the heads go by kHeads at a time: grad_feats += attn^T g,
//           and d_attn = g feats^T is reduced over the warp and added atomically into an fp32 (fp64)
//           buffer. A last kernel, one thread per (frame, head), applies the softmax backward.
#include <torch/library.h>

#include "../common.h"
#include "cuda_common.cuh"

namespace stafast {
namespace {

constexpr int kHeads = 8;   // heads per pass
constexpr int kCells = 16;  // grid cells per shared-memory tile

template <typename scalar_t, typename acc_t>
__global__ void stats_kernel(const scalar_t* __restrict__ logits, acc_t* __restrict__ stats, int64_t rows, int L) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  const scalar_t* e = logits + row * L;
  acc_t mx = static_cast<acc_t>(e[0]);
  for (int l = 1; l < L; ++l) mx = max(mx, static_cast<acc_t>(e[l]));
  acc_t sum = 0;
  for (int l = 0; l < L; ++l) sum += exp(static_cast<acc_t>(e[l]) - mx);
  stats[2 * row] = mx;
  stats[2 * row + 1] = acc_t(1) / sum;
}

// attn[k0 + j][l0 + i] for j < kHeads, i < kCells into tile (0 outside K x L).
template <typename scalar_t, typename acc_t>
__device__ void stage(const scalar_t* logits, const acc_t* stats, acc_t* tile, int64_t m, int K, int L, int k0,
                      int l0) {
  for (int t = threadIdx.x; t < kHeads * kCells; t += blockDim.x) {
    const int k = k0 + t / kCells, l = l0 + t % kCells;
    acc_t a = 0;
    if (k < K && l < L) {
      const int64_t row = m * K + k;
      a = exp(static_cast<acc_t>(logits[row * L + l]) - stats[2 * row]) * stats[2 * row + 1];
    }
    tile[t] = a;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ logits, const acc_t* __restrict__ stats,
                               const scalar_t* __restrict__ feats, scalar_t* __restrict__ pooled,
                               scalar_t* __restrict__ attn_out, int K, int L, int64_t D) {
  __shared__ acc_t tile[kHeads * kCells];
  const int64_t m = blockIdx.x;
  if (blockIdx.y == 0)
    for (int64_t i = threadIdx.x; i < int64_t(K) * L; i += blockDim.x) {
      const int64_t row = m * K + i / L;
      attn_out[m * K * L + i] =
          static_cast<scalar_t>(exp(static_cast<acc_t>(logits[m * K * L + i]) - stats[2 * row]) * stats[2 * row + 1]);
    }
  const int64_t d = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  for (int k0 = 0; k0 < K; k0 += kHeads) {
    acc_t acc[kHeads] = {};
    for (int l0 = 0; l0 < L; l0 += kCells) {
      stage(logits, stats, tile, m, K, L, k0, l0);
      __syncthreads();
      if (d < D)
        for (int i = 0; i < kCells && l0 + i < L; ++i) {
          const acc_t f = static_cast<acc_t>(feats[(m * L + l0 + i) * D + d]);
#pragma unroll
          for (int j = 0; j < kHeads; ++j) acc[j] += tile[j * kCells + i] * f;
        }
      __syncthreads();
    }
    if (d < D)
#pragma unroll
      for (int j = 0; j < kHeads; ++j)
        if (k0 + j < K) pooled[(m * K + k0 + j) * D + d] = static_cast<scalar_t>(acc[j]);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_tile_kernel(const scalar_t* __restrict__ grad_pooled, const scalar_t* __restrict__ logits,
                                     const acc_t* __restrict__ stats, const scalar_t* __restrict__ feats,
                                     scalar_t* __restrict__ grad_feats, acc_t* __restrict__ d_attn, int K, int L,
                                     int64_t D) {
  __shared__ acc_t tile[kHeads * kCells];
  const int64_t m = blockIdx.x;
  const int64_t d = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  const bool valid = d < D;
  for (int l0 = 0; l0 < L; l0 += kCells) {
    acc_t f[kCells], gf[kCells];
#pragma unroll
    for (int i = 0; i < kCells; ++i) {
      f[i] = valid && l0 + i < L ? static_cast<acc_t>(feats[(m * L + l0 + i) * D + d]) : acc_t(0);
      gf[i] = 0;
    }
    for (int k0 = 0; k0 < K; k0 += kHeads) {
      stage(logits, stats, tile, m, K, L, k0, l0);
      __syncthreads();
      for (int j = 0; j < kHeads && k0 + j < K; ++j) {
        const int64_t row = m * K + k0 + j;
        const acc_t g = valid ? static_cast<acc_t>(grad_pooled[row * D + d]) : acc_t(0);
#pragma unroll
        for (int i = 0; i < kCells; ++i) {
          gf[i] += tile[j * kCells + i] * g;  // attn^T grad_pooled
          const acc_t part = warp_sum(g * f[i]);  // grad_pooled feats^T, this warp's channels
          if ((threadIdx.x & 31) == 0 && l0 + i < L) atomicAdd(d_attn + row * L + l0 + i, part);
        }
      }
      __syncthreads();
    }
    if (valid)
#pragma unroll
      for (int i = 0; i < kCells; ++i)
        if (l0 + i < L) grad_feats[(m * L + l0 + i) * D + d] = static_cast<scalar_t>(gf[i]);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_softmax_kernel(const scalar_t* __restrict__ grad_attn, const scalar_t* __restrict__ logits,
                                        const acc_t* __restrict__ stats, const acc_t* __restrict__ d_attn,
                                        scalar_t* __restrict__ grad_logits, int64_t rows, int L) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  const acc_t mx = stats[2 * row], inv = stats[2 * row + 1];
  acc_t inner = 0;
  for (int l = 0; l < L; ++l) {
    const acc_t a = exp(static_cast<acc_t>(logits[row * L + l]) - mx) * inv;
    inner += a * (d_attn[row * L + l] + static_cast<acc_t>(grad_attn[row * L + l]));
  }
  for (int l = 0; l < L; ++l) {
    const acc_t a = exp(static_cast<acc_t>(logits[row * L + l]) - mx) * inv;
    grad_logits[row * L + l] =
        static_cast<scalar_t>(a * (d_attn[row * L + l] + static_cast<acc_t>(grad_attn[row * L + l]) - inner));
  }
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

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
  auto stats = at::empty({M * K, 2}, logits.options().dtype(acc_type(logits.scalar_type())));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  STAFAST_DISPATCH(logits.scalar_type(), "spatial_softmax_pool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    stats_kernel<scalar_t, acc_t><<<cdiv(M * K, kThreads), kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), stats.data_ptr<acc_t>(), M * K, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    forward_kernel<scalar_t, acc_t><<<dim3(M, cdiv(D, kThreads)), kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), stats.data_ptr<acc_t>(), feats.data_ptr<scalar_t>(), pooled.data_ptr<scalar_t>(),
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
  auto d_attn = at::zeros({M, K, L}, logits.options().dtype(acc_type(dtype)));
  auto stats = at::empty({M * K, 2}, logits.options().dtype(acc_type(dtype)));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  STAFAST_DISPATCH(dtype, "spatial_softmax_pool_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    stats_kernel<scalar_t, acc_t><<<cdiv(M * K, kThreads), kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), stats.data_ptr<acc_t>(), M * K, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_tile_kernel<scalar_t, acc_t><<<dim3(M, cdiv(D, kThreads)), kThreads, 0, stream>>>(
        grad_pooled.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(), stats.data_ptr<acc_t>(),
        feats.data_ptr<scalar_t>(), grad_feats.data_ptr<scalar_t>(), d_attn.data_ptr<acc_t>(), K, L, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_softmax_kernel<scalar_t, acc_t><<<cdiv(M * K, kThreads), kThreads, 0, stream>>>(
        grad_attn.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(), stats.data_ptr<acc_t>(), d_attn.data_ptr<acc_t>(),
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
