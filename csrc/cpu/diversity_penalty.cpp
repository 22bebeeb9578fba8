// CPU kernels of diversity_penalty (Eq. 9 Hellinger Q, Eq. 10 Q'). A frame is tiny (K x L, e.g.
// 6 x 32) and its K x K Gram matrix tinier, so vectorising inside a frame leaves short loops and
// a horizontal sum per Gram entry. Instead W frames (one SIMD register of them) are transposed
// into lanes and every loop below runs the same arithmetic on W frames at once; blocks of frames
// are spread over threads.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace stafast {
namespace {

// Frames per block: 64 bytes of lanes (one AVX-512 or two AVX2 registers).
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);
// Blocks per task: a block is a few microseconds of work, so small batches stay on one thread.
constexpr int64_t kGrain = 4;

// One block of W frames in lane layout: x[i * W + w] is element i (of K*L or K*K) of frame w.
template <typename T>
struct Block {
  static constexpr int64_t W = kLanes<T>;
  int64_t K, L, n;     // n <= W frames are real; the other lanes hold zeros and are never stored
  std::vector<T> s, r, e;  // S (K*L*W), R (K*L*W), E = R R^T - I (K*K*W)

  Block(int64_t K, int64_t L) : K(K), L(L), n(0), s(K * L * W), r(K * L * W), e(K * K * W) {}

  // Loads frames m0 .. m0+n-1 of attn (M, K, L) and computes R and E.
  void load(const T* attn, int64_t m0, int64_t n_frames, bool hellinger) {
    n = n_frames;
    const int64_t kl = K * L;
    const T* src = attn + m0 * kl;
    if (n == W) {
      for (int64_t i = 0; i < kl; ++i)
#pragma omp simd
        for (int64_t w = 0; w < W; ++w) s[i * W + w] = src[w * kl + i];
    } else {
      std::fill(s.begin(), s.end(), T(0));
      for (int64_t i = 0; i < kl; ++i)
        for (int64_t w = 0; w < n; ++w) s[i * W + w] = src[w * kl + i];
    }
    if (hellinger) {
#pragma omp simd
      for (int64_t i = 0; i < kl * W; ++i) {
        const T v = s[i] > T(0) ? s[i] : T(0);  // sqrt(S), 0 where S <= 0 (see stafast/ops/reference.py)
        r[i] = std::sqrt(v);
      }
    } else {
      std::copy(s.begin(), s.end(), r.begin());
    }
    for (int64_t i = 0; i < K; ++i) {
      for (int64_t j = 0; j <= i; ++j) {
        // Four partial sums over l, so four multiply-add chains are in flight instead of one.
        T acc[4][W] = {};
        const T* __restrict__ ri = r.data() + i * L * W;
        const T* __restrict__ rj = r.data() + j * L * W;
        int64_t l = 0;
        for (; l + 4 <= L; l += 4)
          for (int64_t u = 0; u < 4; ++u)
#pragma omp simd
            for (int64_t w = 0; w < W; ++w) acc[u][w] += ri[(l + u) * W + w] * rj[(l + u) * W + w];
        for (; l < L; ++l)
#pragma omp simd
          for (int64_t w = 0; w < W; ++w) acc[0][w] += ri[l * W + w] * rj[l * W + w];
        const T delta = i == j ? T(1) : T(0);
#pragma omp simd
        for (int64_t w = 0; w < W; ++w)
          e[(i * K + j) * W + w] = e[(j * K + i) * W + w] = (acc[0][w] + acc[1][w]) + (acc[2][w] + acc[3][w]) - delta;
      }
    }
  }
};

template <typename T>
void forward_kernel(const T* attn, T* q, int64_t M, int64_t K, int64_t L, bool hellinger) {
  constexpr int64_t W = kLanes<T>;
  at::parallel_for(0, (M + W - 1) / W, kGrain, [&](int64_t begin, int64_t end) {
    Block<T> blk(K, L);
    for (int64_t b = begin; b < end; ++b) {
      blk.load(attn, b * W, std::min(W, M - b * W), hellinger);
      T sum[W] = {};
      for (int64_t i = 0; i < K * K; ++i)
#pragma omp simd
        for (int64_t w = 0; w < W; ++w) sum[w] += blk.e[i * W + w] * blk.e[i * W + w];
      std::copy_n(sum, blk.n, q + b * W);
    }
  });
}

template <typename T>
void backward_kernel(const T* grad, const T* attn, T* grad_attn, int64_t M, int64_t K, int64_t L, bool hellinger) {
  constexpr int64_t W = kLanes<T>;
  at::parallel_for(0, (M + W - 1) / W, kGrain, [&](int64_t begin, int64_t end) {
    Block<T> blk(K, L);
    std::vector<T> out(K * L * W), er(L * W);
    for (int64_t b = begin; b < end; ++b) {
      blk.load(attn, b * W, std::min(W, M - b * W), hellinger);
      // Hellinger: dQ/dS = 2 (E R) / R, and 0 where S <= 0; l2: 4 E S. Times the upstream grad.
      T g[W] = {};
      for (int64_t w = 0; w < blk.n; ++w) g[w] = (hellinger ? 2 : 4) * grad[b * W + w];
      for (int64_t k = 0; k < K; ++k) {
        // Row k of E R, accumulated over j with all of (l, lane) in the inner loop: independent
        // multiply-adds rather than a chain of K per element.
        std::fill(er.begin(), er.end(), T(0));
        for (int64_t j = 0; j < K; ++j) {
          const T* __restrict__ ekj = blk.e.data() + (k * K + j) * W;
          const T* __restrict__ rj = blk.r.data() + j * L * W;
          for (int64_t l = 0; l < L; ++l)
#pragma omp simd
            for (int64_t w = 0; w < W; ++w) er[l * W + w] += ekj[w] * rj[l * W + w];
        }
        const T* __restrict__ sk = blk.s.data() + k * L * W;
        const T* __restrict__ rk = blk.r.data() + k * L * W;
        T* __restrict__ ok = out.data() + k * L * W;
        for (int64_t l = 0; l < L; ++l) {
          const int64_t i = l * W;
          if (hellinger) {
#pragma omp simd
            for (int64_t w = 0; w < W; ++w)
              ok[i + w] = sk[i + w] > T(0) ? g[w] * er[i + w] / (sk[i + w] > T(0) ? rk[i + w] : T(1)) : T(0);
          } else {
#pragma omp simd
            for (int64_t w = 0; w < W; ++w) ok[i + w] = g[w] * er[i + w];
          }
        }
      }
      for (int64_t w = 0; w < blk.n; ++w) {
        T* dst = grad_attn + (b * W + w) * K * L;
        for (int64_t i = 0; i < K * L; ++i) dst[i] = out[i * W + w];
      }
    }
  });
}

at::Tensor forward(const at::Tensor& attn_in, c10::string_view kind) {
  check_diversity_penalty(attn_in);
  const bool hellinger = is_hellinger(std::string(kind));
  const auto attn = compute_copy(attn_in);
  const int64_t M = attn.size(0), K = attn.size(1), L = attn.size(2);
  auto q = empty_output({M}, attn.options());
  AT_DISPATCH_FLOATING_TYPES(attn.scalar_type(), "diversity_penalty", [&] {
    forward_kernel<scalar_t>(attn.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), M, K, L, hellinger);
  });
  return q;  // float32 for 16-bit inputs, like the reference
}

at::Tensor backward(const at::Tensor& grad_in, const at::Tensor& attn_in, c10::string_view kind) {
  check_diversity_penalty_backward(grad_in, attn_in);
  const bool hellinger = is_hellinger(std::string(kind));
  const auto attn = compute_copy(attn_in);
  const auto grad = grad_in.to(attn.scalar_type()).contiguous();
  const int64_t M = attn.size(0), K = attn.size(1), L = attn.size(2);
  auto grad_attn = empty_output(attn.sizes(), attn.options());
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
