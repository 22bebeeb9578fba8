// CUDA kernels of frame_attention (supplementary Eqs. 1-3, rows as the text says): one block
// per (clip, head), threads over D. Pass 1 reduces the N x N scores (and dC in backward) into
// shared memory; a few threads form C (and dA); pass 2 writes the output rows.
#include <torch/library.h>

#include "../common.h"
#include "cuda_common.cuh"

namespace stafast {
namespace {

// Reduce sum_d a_i[d] b_j[d] for all (i, j) over the block into out (N x N, zeroed).
template <typename scalar_t, typename acc_t>
__device__ void pair_dots(const scalar_t* a, const scalar_t* b, acc_t* out, int N, int64_t stride, int64_t D) {
  for (int p = 0; p < N * N; ++p) {
    const int i = p / N, j = p % N;
    acc_t acc = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
      acc += static_cast<acc_t>(a[i * stride + d]) * static_cast<acc_t>(b[j * stride + d]);
    acc = warp_sum(acc);
    if ((threadIdx.x & 31) == 0) atomicAdd(out + p, acc);
  }
  __syncthreads();
}

template <typename scalar_t, typename acc_t>
__device__ void softmax_rows(acc_t* c, const scalar_t* bias, acc_t scale, int N) {
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    acc_t mx = -INFINITY;
    for (int j = 0; j < N; ++j) mx = max(mx, c[i * N + j] = scale * c[i * N + j] + static_cast<acc_t>(bias[i * N + j]));
    acc_t sum = 0;
    for (int j = 0; j < N; ++j) sum += (c[i * N + j] = exp(c[i * N + j] - mx));
    for (int j = 0; j < N; ++j) c[i * N + j] /= sum;
  }
  __syncthreads();
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ bias,
                               scalar_t* __restrict__ out, acc_t scale, int N, int K, int64_t D) {
  extern __shared__ unsigned char smem[];
  acc_t* c = reinterpret_cast<acc_t*>(smem);
  const int64_t b = blockIdx.x / K, k = blockIdx.x % K, stride = int64_t(K) * D;
  const scalar_t* xb = x + (b * N * K + k) * D;
  for (int p = threadIdx.x; p < N * N; p += blockDim.x) c[p] = 0;
  __syncthreads();
  pair_dots(xb, xb, c, N, stride, D);
  softmax_rows(c, bias, scale, N);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    for (int i = 0; i < N; ++i) {
      acc_t acc = 0;
      for (int j = 0; j < N; ++j) acc += c[i * N + j] * static_cast<acc_t>(xb[j * stride + d]);
      out[(b * N * K + k) * D + i * stride + d] = static_cast<scalar_t>(acc);
    }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                const scalar_t* __restrict__ bias, scalar_t* __restrict__ grad_x,
                                acc_t* __restrict__ grad_scores, acc_t scale, int N, int K, int64_t D) {
  extern __shared__ unsigned char smem[];
  acc_t* c = reinterpret_cast<acc_t*>(smem);
  acc_t* dc = c + N * N;
  const int64_t b = blockIdx.x / K, k = blockIdx.x % K, stride = int64_t(K) * D;
  const int64_t base = (b * N * K + k) * D;
  for (int p = threadIdx.x; p < 2 * N * N; p += blockDim.x) c[p] = 0;
  __syncthreads();
  pair_dots(x + base, x + base, c, N, stride, D);
  pair_dots(grad + base, x + base, dc, N, stride, D);  // dOut X^T
  softmax_rows(c, bias, scale, N);
  for (int i = threadIdx.x; i < N; i += blockDim.x) {  // dA = C (dC - rowsum(C dC)), kept in dc
    acc_t inner = 0;
    for (int j = 0; j < N; ++j) inner += c[i * N + j] * dc[i * N + j];
    for (int j = 0; j < N; ++j) dc[i * N + j] = c[i * N + j] * (dc[i * N + j] - inner);
  }
  __syncthreads();
  for (int p = threadIdx.x; p < N * N; p += blockDim.x) grad_scores[blockIdx.x * N * N + p] = dc[p];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    for (int j = 0; j < N; ++j) {
      acc_t acc = 0;
      for (int i = 0; i < N; ++i)
        acc += c[i * N + j] * static_cast<acc_t>(grad[base + i * stride + d]) +
               scale * (dc[i * N + j] + dc[j * N + i]) * static_cast<acc_t>(x[base + i * stride + d]);
      grad_x[base + j * stride + d] = static_cast<scalar_t>(acc);
    }
}

at::Tensor forward(const at::Tensor& x_in, const at::Tensor& bias_in, double scale) {
  check_input(x_in, "x", 4);
  check_input(bias_in, "bias", 2);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto bias = bias_in.to(x.scalar_type()).contiguous();
  const int64_t B = x.size(0), D = x.size(3);
  const int N = x.size(1), K = x.size(2);
  auto out = at::empty_like(x);
  STAFAST_DISPATCH(x.scalar_type(), "frame_attention", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<B * K, kThreads, N * N * sizeof(acc_t), c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), static_cast<acc_t>(scale), N, K, D);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_in, const at::Tensor& x_in,
                                            const at::Tensor& bias_in, double scale) {
  check_input(x_in, "x", 4);
  check_input(bias_in, "bias", 2);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto dtype = x.scalar_type();
  const auto grad = grad_in.to(dtype).contiguous();
  const auto bias = bias_in.to(dtype).contiguous();
  const int64_t B = x.size(0), D = x.size(3);
  const int N = x.size(1), K = x.size(2);
  auto grad_x = at::empty_like(x);
  auto grad_scores = at::empty({B * K, N, N}, x.options().dtype(dtype == at::kDouble ? at::kDouble : at::kFloat));
  STAFAST_DISPATCH(dtype, "frame_attention_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, acc_t><<<B * K, kThreads, 2 * N * N * sizeof(acc_t), c10::cuda::getCurrentCUDAStream()>>>(
        grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(),
        grad_scores.data_ptr<acc_t>(), static_cast<acc_t>(scale), N, K, D);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_x, grad_scores.sum(0).to(bias_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(stafast_ext, CUDA, m) {
  m.impl("frame_attention", &forward);
  m.impl("frame_attention_backward", &backward);
}

}  // namespace stafast
