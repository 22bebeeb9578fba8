// CPU kernels of frame_attention (supplementary Eqs. 1-3, rows as the text says). Parallel over
// (clip, head) pairs; the N x N scores live in per-thread buffers, rows of D are contiguous.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common.h"

namespace stafast {
namespace {

template <typename T>
T dot(const T* __restrict__ a, const T* __restrict__ b, int64_t D) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t d = 0; d < D; ++d) acc += a[d] * b[d];
  return acc;
}

template <typename T>
void axpy(T w, const T* __restrict__ x, T* __restrict__ y, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) y[d] += w * x[d];
}

// C = row-softmax(scale X X^T + bias) for rows X_i = x + i * stride.
template <typename T>
void scores(const T* x, const T* bias, T* c, T scale, int64_t N, int64_t stride, int64_t D) {
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j <= i; ++j) c[i * N + j] = c[j * N + i] = scale * dot(x + i * stride, x + j * stride, D);
  for (int64_t i = 0; i < N; ++i) {
    T* row = c + i * N;
    T mx = -INFINITY;
    for (int64_t j = 0; j < N; ++j) mx = std::max(mx, row[j] += bias[i * N + j]);
    T sum = 0;
    for (int64_t j = 0; j < N; ++j) sum += (row[j] = std::exp(row[j] - mx));
    for (int64_t j = 0; j < N; ++j) row[j] /= sum;
  }
}

template <typename T>
void forward_kernel(const T* x, const T* bias, T* out, T scale, int64_t B, int64_t N, int64_t K, int64_t D) {
  at::parallel_for(0, B * K, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> c(N * N);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / K, k = p % K, stride = K * D;
      const T* xb = x + (b * N * K + k) * D;
      T* ob = out + (b * N * K + k) * D;
      scores(xb, bias, c.data(), scale, N, stride, D);
      for (int64_t i = 0; i < N; ++i) {
        std::fill(ob + i * stride, ob + i * stride + D, T(0));
        for (int64_t j = 0; j < N; ++j) axpy(c[i * N + j], xb + j * stride, ob + i * stride, D);
      }
    }
  });
}

template <typename T>
void backward_kernel(const T* grad, const T* x, const T* bias, T* grad_x, T* grad_scores, T scale, int64_t B,
                     int64_t N, int64_t K, int64_t D) {
  at::parallel_for(0, B * K, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> c(N * N), dc(N * N);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / K, k = p % K, stride = K * D;
      const T* xb = x + (b * N * K + k) * D;
      const T* gb = grad + (b * N * K + k) * D;
      T* dxb = grad_x + (b * N * K + k) * D;
      T* da = grad_scores + p * N * N;
      scores(xb, bias, c.data(), scale, N, stride, D);
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j) dc[i * N + j] = dot(gb + i * stride, xb + j * stride, D);  // dOut X^T
      for (int64_t i = 0; i < N; ++i) {
        T inner = 0;
        for (int64_t j = 0; j < N; ++j) inner += c[i * N + j] * dc[i * N + j];
        for (int64_t j = 0; j < N; ++j) da[i * N + j] = c[i * N + j] * (dc[i * N + j] - inner);
      }
      for (int64_t j = 0; j < N; ++j) {  // dX_j = sum_i C_ij dOut_i + scale (dA_ij + dA_ji) X_i
        T* out = dxb + j * stride;
        std::fill(out, out + D, T(0));
        for (int64_t i = 0; i < N; ++i) {
          axpy(c[i * N + j], gb + i * stride, out, D);
          axpy(scale * (da[i * N + j] + da[j * N + i]), xb + i * stride, out, D);
        }
      }
    }
  });
}

at::Tensor forward(const at::Tensor& x_in, const at::Tensor& bias_in, double scale) {
  check_frame_attention(x_in, bias_in);
  const auto x = compute_copy(x_in);
  const auto bias = compute_copy(bias_in).to(x.scalar_type());
  const int64_t B = x.size(0), N = x.size(1), K = x.size(2), D = x.size(3);
  auto out = empty_output(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "frame_attention", [&] {
    forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                             static_cast<scalar_t>(scale), B, N, K, D);
  });
  return out.to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_in, const at::Tensor& x_in,
                                            const at::Tensor& bias_in, double scale) {
  check_frame_attention_backward(grad_in, x_in, bias_in);
  const auto x = compute_copy(x_in);
  const auto dtype = x.scalar_type();
  const auto grad = compute_copy(grad_in).to(dtype);
  const auto bias = compute_copy(bias_in).to(dtype);
  const int64_t B = x.size(0), N = x.size(1), K = x.size(2), D = x.size(3);
  auto grad_x = empty_output(x.sizes(), x.options());
  auto grad_scores = at::empty({B * K, N, N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "frame_attention_backward", [&] {
    backward_kernel<scalar_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
                              grad_x.data_ptr<scalar_t>(), grad_scores.data_ptr<scalar_t>(),
                              static_cast<scalar_t>(scale), B, N, K, D);
  });
  return {grad_x.to(x_in.scalar_type()), grad_scores.sum(0).to(bias_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(stafast_ext, CPU, m) {
  m.impl("frame_attention", &forward);
  m.impl("frame_attention_backward", &backward);
}

}  // namespace stafast
