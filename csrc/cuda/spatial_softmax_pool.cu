// CUDA kernels of spatial_softmax_pool (Eqs. 2-3), the fallback beside the Triton kernels, for any
// K and L: nothing per frame is held whole in shared memory.
// stats:    one thread per (frame, head): the row max and 1 / sum of exp over L (Eq. 2's normaliser).
// forward:  block (frame m, 128 channels). Heads go kHeads at a time (accumulators in registers), L
//           kCells at a time: the attention of that tile is staged in shared memory, then each thread
//           pools its channel. feats is read once per kHeads heads.
// backward: same grid. For each tile of kCells cells a thread keeps its channel's feats and
//           grad_feats in registers while the heads go by kHeads at a time: grad_feats += attn^T g,
//           and d_attn = g feats^T is reduced over each warp, then over the block's warps in shared
//           memory, into the block's partial sums (M, D splits, K, L) in fp32 (fp64). A last kernel,
//           one thread per (frame, head), adds the splits in a fixed order (no atomics: the same
//           result on every run, as the Triton backward) and applies the softmax backward.
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

constexpr int kWarps = kThreads / 32;
static_assert(kHeads * kCells == kThreads, "the block sums a tile's partials with one thread per (head, cell)");

template <typename scalar_t, typename acc_t>
__global__ void backward_tile_kernel(const scalar_t* __restrict__ grad_pooled, const scalar_t* __restrict__ logits,
                                     const acc_t* __restrict__ stats, const scalar_t* __restrict__ feats,
                                     scalar_t* __restrict__ grad_feats, acc_t* __restrict__ partial, int K, int L,
                                     int64_t D) {
  __shared__ acc_t tile[kHeads * kCells];
  __shared__ acc_t warp_parts[kWarps][kHeads * kCells];  // each warp's sums over its 32 channels
  const int64_t m = blockIdx.x;
  const int64_t d = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  const int warp = threadIdx.x / 32;
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
          if ((threadIdx.x & 31) == 0) warp_parts[warp][j * kCells + i] = part;
        }
      }
      __syncthreads();
      {  // the block's channels, warp by warp in order: one thread per (head, cell) of the tile
        const int j = threadIdx.x / kCells, i = threadIdx.x % kCells;
        if (k0 + j < K && l0 + i < L) {
          acc_t sum = 0;
          for (int w = 0; w < kWarps; ++w) sum += warp_parts[w][threadIdx.x];
          partial[((m * gridDim.y + blockIdx.y) * K + k0 + j) * L + l0 + i] = sum;
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

// d_attn[row, l] = grad_attn[row, l] + the D splits' partial sums, added in split order.
template <typename scalar_t, typename acc_t>
__device__ acc_t d_attn(const scalar_t* grad_attn, const acc_t* partial, int64_t row, int l, int K, int L,
                        int splits) {
  const int64_t m = row / K, k = row % K;
  acc_t sum = static_cast<acc_t>(grad_attn[row * L + l]);
  for (int s = 0; s < splits; ++s) sum += partial[((m * splits + s) * K + k) * L + l];
  return sum;
}

template <typename scalar_t, typename acc_t>
__global__ void backward_softmax_kernel(const scalar_t* __restrict__ grad_attn, const scalar_t* __restrict__ logits,
                                        const acc_t* __restrict__ stats, const acc_t* __restrict__ partial,
                                        scalar_t* __restrict__ grad_logits, int64_t rows, int K, int L, int splits) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  const acc_t mx = stats[2 * row], inv = stats[2 * row + 1];
  acc_t inner = 0;
  for (int l = 0; l < L; ++l) {
    const acc_t a = exp(static_cast<acc_t>(logits[row * L + l]) - mx) * inv;
    inner += a * d_attn(grad_attn, partial, row, l, K, L, splits);
  }
  for (int l = 0; l < L; ++l) {
    const acc_t a = exp(static_cast<acc_t>(logits[row * L + l]) - mx) * inv;
    grad_logits[row * L + l] = static_cast<scalar_t>(a * (d_attn(grad_attn, partial, row, l, K, L, splits) - inner));
  }
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& logits_in, const at::Tensor& feats_in) {
  check_spatial_softmax_pool(logits_in, feats_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto dtype = kernel_dtype({logits_in, feats_in});
  const auto logits = logits_in.to(dtype).contiguous();
  const auto feats = feats_in.to(dtype).contiguous();
  const int64_t M = logits.size(0), D = feats.size(2);
  const int K = logits.size(1), L = logits.size(2);
  auto pooled = at::empty({M, K, D}, logits.options());
  auto attn = at::empty_like(logits);
  auto stats = at::empty({M * K, 2}, logits.options().dtype(acc_dtype(dtype)));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  STAFAST_DISPATCH(dtype, "spatial_softmax_pool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch(stats_kernel<scalar_t, acc_t>, cdiv(M * K, kThreads), kThreads, stream, logits.data_ptr<scalar_t>(),
           stats.data_ptr<acc_t>(), M * K, L);
    launch(forward_kernel<scalar_t, acc_t>, dim3(M, cdiv(D, kThreads)), kThreads, stream, logits.data_ptr<scalar_t>(),
           stats.data_ptr<acc_t>(), feats.data_ptr<scalar_t>(), pooled.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
           K, L, D);
  });
  return {pooled.to(feats_in.scalar_type()), attn.to(logits_in.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_pooled_in, const at::Tensor& grad_attn_in,
                                            const at::Tensor& logits_in, const at::Tensor& feats_in) {
  check_spatial_softmax_pool_backward(grad_pooled_in, grad_attn_in, logits_in, feats_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto dtype = kernel_dtype({logits_in, feats_in, grad_pooled_in, grad_attn_in});
  const auto logits = logits_in.to(dtype).contiguous();
  const auto feats = feats_in.to(dtype).contiguous();
  const auto grad_pooled = grad_pooled_in.to(dtype).contiguous();
  const auto grad_attn = grad_attn_in.to(dtype).contiguous();
  const int64_t M = logits.size(0), D = feats.size(2);
  const int K = logits.size(1), L = logits.size(2);
  const int splits = cdiv(D, kThreads);  // the tile kernel's blocks along D, each writing its partial sums
  auto grad_logits = at::empty_like(logits);
  auto grad_feats = at::empty_like(feats);
  auto partial = at::empty({M, splits, K, L}, logits.options().dtype(acc_dtype(dtype)));
  auto stats = at::empty({M * K, 2}, logits.options().dtype(acc_dtype(dtype)));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  STAFAST_DISPATCH(dtype, "spatial_softmax_pool_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch(stats_kernel<scalar_t, acc_t>, cdiv(M * K, kThreads), kThreads, stream, logits.data_ptr<scalar_t>(),
           stats.data_ptr<acc_t>(), M * K, L);
    launch(backward_tile_kernel<scalar_t, acc_t>, dim3(M, splits), kThreads, stream, grad_pooled.data_ptr<scalar_t>(),
           logits.data_ptr<scalar_t>(), stats.data_ptr<acc_t>(), feats.data_ptr<scalar_t>(),
           grad_feats.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(), K, L, D);
    launch(backward_softmax_kernel<scalar_t, acc_t>, cdiv(M * K, kThreads), kThreads, stream,
           grad_attn.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(), stats.data_ptr<acc_t>(),
           partial.data_ptr<acc_t>(), grad_logits.data_ptr<scalar_t>(), M * K, K, L, splits);
  });
  return {grad_logits.to(logits_in.scalar_type()), grad_feats.to(feats_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(stafast_ext, CUDA, m) {
  m.impl("spatial_softmax_pool", &forward);
  m.impl("spatial_softmax_pool_backward", &backward);
}

}  // namespace stafast
