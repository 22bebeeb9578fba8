// CUDA kernels of frame_attention (supplementary Eqs. 1-3, rows as the text says), for any N: the
// N x N matrices of the B*K (clip, head) pairs live in a global fp32 (fp64) workspace, not in
// shared memory.
// pairs: each warp reduces (i, j) pairs over D: out[p, i, j] = scale * A_i . B_j (+ bias[i, j]); the
//        blocks along y stride over the N^2 pairs (gridDim.y stops at 65,535: N >= 512 loops).
// rows:  one thread per row, in place: C = softmax(S), or dA = C (dC - rowsum(C dC)).
// mix:   block (clip-head p, 128 channels), a thread per channel:
//        out_i = sum_j W[i, j] Y_j (W^T with trans) + scale2 * sum_j (W2[i, j] + W2[j, i]) Y2_j.
// forward:  S = scale X X^T + bias, C = softmax(S), out = C X.
// backward: C again, dC = dOut X^T, dA = C (dC - rowsum(C dC)), dX = C^T dOut + scale (dA + dA^T) X,
//           dbias = sum of dA over the clip-heads.
#include <torch/library.h>

#include "../common.h"
#include "cuda_common.cuh"

namespace stafast {
namespace {

// Row i of clip-head p = b * K + k of a contiguous (B, N, K, D) tensor.
__device__ __forceinline__ int64_t row_offset(int64_t p, int i, int N, int K, int64_t D) {
  return ((p / K * N + i) * K + p % K) * D;
}

template <typename scalar_t, typename acc_t>
__global__ void pairs_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                             const acc_t* __restrict__ bias, acc_t* __restrict__ out, acc_t scale, int N, int K,
                             int64_t D) {
  const int64_t p = blockIdx.x;
  const int warps = blockDim.x / 32, lane = threadIdx.x & 31;
  // a pair per warp: whole warps take the same turns of the loop
  for (int64_t pair = blockIdx.y * int64_t(warps) + threadIdx.x / 32; pair < int64_t(N) * N;
       pair += int64_t(gridDim.y) * warps) {
    const int i = pair / N, j = pair % N;
    const scalar_t* ai = a + row_offset(p, i, N, K, D);
    const scalar_t* bj = b + row_offset(p, j, N, K, D);
    acc_t dot = 0;
    for (int64_t d = lane; d < D; d += 32) dot += static_cast<acc_t>(ai[d]) * static_cast<acc_t>(bj[d]);
    dot = warp_sum(dot);
    if (lane == 0) out[p * N * N + pair] = scale * dot + (bias != nullptr ? bias[pair] : acc_t(0));
  }
}

template <typename acc_t>
__global__ void rows_kernel(acc_t* __restrict__ s, acc_t* __restrict__ ds, int64_t rows, int N) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  acc_t* c = s + row * N;
  if (ds == nullptr) {  // softmax in place
    acc_t mx = c[0];
    for (int j = 1; j < N; ++j) mx = max(mx, c[j]);
    acc_t sum = 0;
    for (int j = 0; j < N; ++j) sum += (c[j] = exp(c[j] - mx));
    for (int j = 0; j < N; ++j) c[j] /= sum;
  } else {  // softmax backward into ds
    acc_t* dc = ds + row * N;
    acc_t inner = 0;
    for (int j = 0; j < N; ++j) inner += c[j] * dc[j];
    for (int j = 0; j < N; ++j) dc[j] = c[j] * (dc[j] - inner);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void mix_kernel(const acc_t* __restrict__ w, const scalar_t* __restrict__ y, const acc_t* __restrict__ w2,
                           const scalar_t* __restrict__ y2, scalar_t* __restrict__ out, acc_t scale2, bool trans, int N,
                           int K, int64_t D) {
  const int64_t p = blockIdx.x;
  const int64_t d = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (d >= D) return;
  const acc_t* wp = w + p * N * N;
  const acc_t* w2p = w2 != nullptr ? w2 + p * N * N : nullptr;
  for (int i = 0; i < N; ++i) {
    acc_t acc = 0;
    for (int j = 0; j < N; ++j) {
      const int64_t rj = row_offset(p, j, N, K, D) + d;
      acc += (trans ? wp[j * N + i] : wp[i * N + j]) * static_cast<acc_t>(y[rj]);
      if (w2p != nullptr) acc += scale2 * (w2p[i * N + j] + w2p[j * N + i]) * static_cast<acc_t>(y2[rj]);
    }
    out[row_offset(p, i, N, K, D) + d] = static_cast<scalar_t>(acc);
  }
}

constexpr int kPairsPerBlock = kThreads / 32;

template <typename scalar_t, typename acc_t>
void pairs(const at::Tensor& a, const at::Tensor& b, const at::Tensor* bias, at::Tensor& out, double scale,
           cudaStream_t stream) {
  const int64_t B = a.size(0), D = a.size(3);
  const int N = a.size(1), K = a.size(2);
  const auto blocks_y = std::min<int64_t>(cdiv(int64_t(N) * N, kPairsPerBlock), grid_y_limit());
  launch(pairs_kernel<scalar_t, acc_t>, dim3(B * K, blocks_y), kThreads, stream, a.data_ptr<scalar_t>(),
         b.data_ptr<scalar_t>(), bias != nullptr ? bias->data_ptr<acc_t>() : nullptr, out.data_ptr<acc_t>(),
         static_cast<acc_t>(scale), N, K, D);
}

template <typename acc_t>
void rows(at::Tensor& s, at::Tensor* ds, cudaStream_t stream) {
  const int64_t n_rows = s.size(0) * s.size(1);
  launch(rows_kernel<acc_t>, cdiv(n_rows, kThreads), kThreads, stream, s.data_ptr<acc_t>(),
         ds != nullptr ? ds->data_ptr<acc_t>() : nullptr, n_rows, s.size(1));
}

at::Tensor forward(const at::Tensor& x_in, const at::Tensor& bias_in, double scale) {
  check_frame_attention(x_in, bias_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto acc = acc_dtype(x.scalar_type());
  const auto bias = bias_in.to(acc).contiguous();  // the spec adds it in its computation dtype
  const int64_t B = x.size(0), D = x.size(3);
  const int N = x.size(1), K = x.size(2);
  auto out = at::empty_like(x);
  auto c = at::empty({B * K, N, N}, x.options().dtype(acc));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  STAFAST_DISPATCH(x.scalar_type(), "frame_attention", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pairs<scalar_t, acc_t>(x, x, &bias, c, scale, stream);
    rows<acc_t>(c, nullptr, stream);
    launch(mix_kernel<scalar_t, acc_t>, dim3(B * K, cdiv(D, kThreads)), kThreads, stream, c.data_ptr<acc_t>(),
           x.data_ptr<scalar_t>(), nullptr, nullptr, out.data_ptr<scalar_t>(), acc_t(0), false, N, K, D);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_in, const at::Tensor& x_in,
                                            const at::Tensor& bias_in, double scale) {
  check_frame_attention_backward(grad_in, x_in, bias_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto dtype = kernel_dtype({x_in, grad_in});
  const auto acc = acc_dtype(dtype);
  const auto x = x_in.to(dtype).contiguous();
  const auto grad = grad_in.to(dtype).contiguous();
  const auto bias = bias_in.to(acc).contiguous();
  const int64_t B = x.size(0), D = x.size(3);
  const int N = x.size(1), K = x.size(2);
  auto grad_x = at::empty_like(x);
  auto c = at::empty({B * K, N, N}, x.options().dtype(acc));
  auto grad_scores = at::empty({B * K, N, N}, x.options().dtype(acc));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  STAFAST_DISPATCH(dtype, "frame_attention_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pairs<scalar_t, acc_t>(x, x, &bias, c, scale, stream);
    rows<acc_t>(c, nullptr, stream);                                     // C
    pairs<scalar_t, acc_t>(grad, x, nullptr, grad_scores, 1.0, stream);  // dC = dOut X^T
    rows<acc_t>(c, &grad_scores, stream);                                // dA
    launch(mix_kernel<scalar_t, acc_t>, dim3(B * K, cdiv(D, kThreads)), kThreads, stream, c.data_ptr<acc_t>(),
           grad.data_ptr<scalar_t>(), grad_scores.data_ptr<acc_t>(), x.data_ptr<scalar_t>(),
           grad_x.data_ptr<scalar_t>(), static_cast<acc_t>(scale), true, N, K, D);
  });
  return {grad_x.to(x_in.scalar_type()), grad_scores.sum(0).to(bias_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(stafast_ext, CUDA, m) {
  m.impl("frame_attention", &forward);
  m.impl("frame_attention_backward", &backward);
}

}  // namespace stafast
