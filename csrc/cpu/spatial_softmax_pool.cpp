// CPU kernels of spatial_softmax_pool (Eqs. 2-3). Parallel over frames; per frame the softmax is
// recomputed (K x L values) and the products over D run as tiles of accumulators in vector
// registers (vec.h).
#include <algorithm>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common.h"
#include "cpu/vec.h"

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

// Eq. 3 for one frame: pooled[k, :] = sum_l attn[k, l] feats[l, :], KB heads x C vectors of
// channels at a time, so each vector of feats that is loaded feeds KB products.
constexpr int kTileHeads = 6;
#ifdef __AVX512F__
constexpr int kForwardVecs = 4;  // 6 x 4 accumulators + 4 feats vectors + 1 broadcast of 32 registers
#else
constexpr int kForwardVecs = 2;  // 6 x 2 + 2 + 1 of 16 (AVX2, SSE)
#endif

template <typename T, int KB, int C>
void forward_tile(const T* attn, const T* feats, T* pooled, int64_t L, int64_t D, int64_t k0, int64_t d) {
  constexpr int64_t W = kVecLanes<T>;
  Vec<T> acc[KB][C];
#pragma GCC unroll 8
  for (int k = 0; k < KB; ++k)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[k][c] = Vec<T>{};
  for (int64_t l = 0; l < L; ++l) {
    Vec<T> x[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) x[c] = load_vec(feats + l * D + d + c * W);
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k) {
      const T w = attn[(k0 + k) * L + l];
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[k][c] += w * x[c];
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < KB; ++k)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) store_vec(pooled + (k0 + k) * D + d + c * W, acc[k][c]);
}

template <typename T>
void forward_kernel(const T* logits, const T* feats, T* pooled, T* attn, int64_t M, int64_t K, int64_t L, int64_t D) {
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      T* a = attn + m * K * L;
      softmax_rows(logits + m * K * L, a, K, L);
      const T* f = feats + m * L * D;
      T* p = pooled + m * K * D;
      constexpr int64_t W = kVecLanes<T>;
      in_tiles<kTileHeads>(K, [&]<int KB>(int64_t k0) {
        in_tiles<kForwardVecs>(D / W, [&]<int C>(int64_t c0) { forward_tile<T, KB, C>(a, f, p, L, D, k0, c0 * W); });
        for (int64_t d = D / W * W; d < D; ++d)  // tail channels
          for (int64_t k = k0; k < k0 + KB; ++k) {
            T s = 0;
            for (int64_t l = 0; l < L; ++l) s += a[k * L + l] * f[l * D + d];
            p[k * D + d] = s;
          }
      });
    }
  });
}

// The backward of Eq. 3 for one frame, in one pass over feats and grad_feats (the two big arrays):
//   grad_feats[l, :] = sum_k attn[k, l] g[k, :]   and   d_attn[k, l] += <g[k, :], feats[l, :]>,
// with g = grad_pooled. A tile is KB heads x LB rows: its KB x LB dot products stay in vector
// registers across all of D, and each vector of g that is loaded feeds both products.
template <typename T>
struct FrameGrad {
  const T* attn;   // (K, L)
  const T* g;      // (K, D)
  const T* feats;  // (L, D)
  T* grad_feats;   // (L, D)
  T* d_attn;       // (K, L)
  int64_t L, D;
};

// Tile sizes: kTileHeads x kTileRows accumulators + kTileRows outputs + kTileRows feats vectors +
// one of g within the vector registers (32 with AVX-512, 16 with AVX2 or SSE).
#ifdef __AVX512F__
constexpr int kTileRows = 3;
#else
constexpr int kTileRows = 2;
#endif

template <typename T, int KB, int LB>
void backward_tile(const FrameGrad<T>& a, int64_t k0, int64_t l0) {
  constexpr int64_t W = kVecLanes<T>;
  const int64_t L = a.L, D = a.D;
  const bool first = k0 == 0;  // later head groups add to grad_feats
  T w[KB][LB];                 // the attn coefficients, broadcast from the stack
  for (int k = 0; k < KB; ++k)
    for (int j = 0; j < LB; ++j) w[k][j] = a.attn[(k0 + k) * L + l0 + j];
  Vec<T> dot[KB][LB];
#pragma GCC unroll 8
  for (int k = 0; k < KB; ++k)
#pragma GCC unroll 8
    for (int j = 0; j < LB; ++j) dot[k][j] = Vec<T>{};
  int64_t d = 0;
  for (; d + W <= D; d += W) {
    Vec<T> out[LB], x[LB];
#pragma GCC unroll 8
    for (int j = 0; j < LB; ++j) {
      out[j] = first ? Vec<T>{} : load_vec(a.grad_feats + (l0 + j) * D + d);
      x[j] = load_vec(a.feats + (l0 + j) * D + d);
    }
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k) {
      const Vec<T> g = load_vec(a.g + (k0 + k) * D + d);
#pragma GCC unroll 8
      for (int j = 0; j < LB; ++j) {
        out[j] += w[k][j] * g;
        dot[k][j] += g * x[j];
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < LB; ++j) store_vec(a.grad_feats + (l0 + j) * D + d, out[j]);
  }
  for (int k = 0; k < KB; ++k)
    for (int j = 0; j < LB; ++j) {
      T s = 0;
      for (int64_t v = 0; v < W; ++v) s += dot[k][j][v];
      for (int64_t e = d; e < D; ++e) s += a.g[(k0 + k) * D + e] * a.feats[(l0 + j) * D + e];  // tail
      a.d_attn[(k0 + k) * L + l0 + j] += s;
    }
  for (int j = 0; j < LB; ++j)  // tail channels of grad_feats
    for (int64_t e = d; e < D; ++e) {
      T o = first ? T(0) : a.grad_feats[(l0 + j) * D + e];
      for (int k = 0; k < KB; ++k) o += w[k][j] * a.g[(k0 + k) * D + e];
      a.grad_feats[(l0 + j) * D + e] = o;
    }
}

template <typename T>
void backward_kernel(const T* grad_pooled, const T* grad_attn, const T* logits, const T* feats, T* grad_logits,
                     T* grad_feats, int64_t M, int64_t K, int64_t L, int64_t D) {
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> attn(K * L), d_attn(K * L);
    for (int64_t m = begin; m < end; ++m) {
      softmax_rows(logits + m * K * L, attn.data(), K, L);
      std::copy_n(grad_attn + m * K * L, K * L, d_attn.data());
      const FrameGrad<T> a{attn.data(), grad_pooled + m * K * D, feats + m * L * D, grad_feats + m * L * D,
                           d_attn.data(), L, D};
      in_tiles<kTileHeads>(K, [&]<int KB>(int64_t k0) {
        in_tiles<kTileRows>(L, [&]<int LB>(int64_t l0) { backward_tile<T, KB, LB>(a, k0, l0); });
      });
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
  check_spatial_softmax_pool(logits_in, feats_in);
  const auto logits = compute_copy(logits_in);
  const auto feats = compute_copy(feats_in).to(logits.scalar_type());
  const int64_t M = logits.size(0), K = logits.size(1), L = logits.size(2), D = feats.size(2);
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
  check_spatial_softmax_pool_backward(grad_pooled_in, grad_attn_in, logits_in, feats_in);
  const auto logits = compute_copy(logits_in);
  const auto dtype = logits.scalar_type();
  const auto feats = compute_copy(feats_in).to(dtype);
  const auto grad_pooled = compute_copy(grad_pooled_in).to(dtype);
  const auto grad_attn = compute_copy(grad_attn_in).to(dtype);
  const int64_t M = logits.size(0), K = logits.size(1), L = logits.size(2), D = feats.size(2);
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
