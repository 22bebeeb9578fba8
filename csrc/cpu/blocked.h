// Register-blocked loops for the CPU kernels: small row-by-row products over a long,
// contiguous D, where the accumulators of a few output rows x one chunk of D stay in registers.
#pragma once
#include <algorithm>
#include <cstdint>

namespace stafast {

// 64 bytes of channels per chunk: one cache line, two AVX2 or one AVX-512 register.
template <typename T>
constexpr int64_t kChunk = 64 / sizeof(T);

// out[o, :] = sum_i coef[o * so + i * si] * in[i, :] for o < n_out, i < n_in; rows of in/out are D long
// with row strides in_stride/out_stride. Output rows are done RB at a time with constant bounds so
// the compiler unrolls them into registers.
template <typename T, int RB>
inline void mix_rows_block(const T* coef, int64_t so, int64_t si, const T* in, int64_t in_stride, T* out,
                           int64_t out_stride, int64_t o0, int64_t n_in, int64_t D) {
  constexpr int64_t W = kChunk<T>;
  int64_t d = 0;
  for (; d + W <= D; d += W) {
    T acc[RB][W] = {};
    for (int64_t i = 0; i < n_in; ++i) {
      const T* __restrict__ x = in + i * in_stride + d;
      for (int r = 0; r < RB; ++r) {
        const T w = coef[(o0 + r) * so + i * si];
#pragma omp simd
        for (int64_t v = 0; v < W; ++v) acc[r][v] += w * x[v];
      }
    }
    for (int r = 0; r < RB; ++r) std::copy_n(acc[r], W, out + (o0 + r) * out_stride + d);
  }
  for (; d < D; ++d) {  // tail shorter than a chunk
    for (int r = 0; r < RB; ++r) {
      T acc = 0;
      for (int64_t i = 0; i < n_in; ++i) acc += coef[(o0 + r) * so + i * si] * in[i * in_stride + d];
      out[(o0 + r) * out_stride + d] = acc;
    }
  }
}

// Output rows per pass: the accumulators (rows x one chunk) must fit in the vector registers
// (32 with AVX-512, 16 with AVX2) beside the input chunk, so that `in` is read once per pass.
#ifdef __AVX512F__
constexpr int kMaxRows = 8;
#else
constexpr int kMaxRows = 6;
#endif

template <typename T>
inline void mix_rows(const T* coef, int64_t so, int64_t si, const T* in, int64_t in_stride, T* out, int64_t out_stride,
                     int64_t n_out, int64_t n_in, int64_t D) {
  int64_t o = 0;
  for (; o + kMaxRows <= n_out; o += kMaxRows)
    mix_rows_block<T, kMaxRows>(coef, so, si, in, in_stride, out, out_stride, o, n_in, D);
  // The remaining rows in one pass too (e.g. all K = 6 heads of spatial_softmax_pool's forward).
  switch (n_out - o) {
#define STAFAST_REST(R) \
  case R:               \
    return mix_rows_block<T, R>(coef, so, si, in, in_stride, out, out_stride, o, n_in, D);
    STAFAST_REST(1) STAFAST_REST(2) STAFAST_REST(3) STAFAST_REST(4) STAFAST_REST(5) STAFAST_REST(6) STAFAST_REST(7)
#undef STAFAST_REST
    default:
      return;
  }
}

// dots[a, b] += <x[a, :], y[b, :]> for a < na, b < nb (rows D long), 2 x 4 row pairs at a time.
template <typename T, int AB, int BB>
inline void row_dots_block(const T* x, const T* y, int64_t stride_x, int64_t stride_y, T* dots, int64_t ld,
                           int64_t a0, int64_t b0, int64_t D) {
  constexpr int64_t W = kChunk<T>;
  T acc[AB][BB][W] = {};
  int64_t d = 0;
  for (; d + W <= D; d += W)
    for (int a = 0; a < AB; ++a)
      for (int b = 0; b < BB; ++b) {
        const T* __restrict__ xa = x + (a0 + a) * stride_x + d;
        const T* __restrict__ yb = y + (b0 + b) * stride_y + d;
#pragma omp simd
        for (int64_t v = 0; v < W; ++v) acc[a][b][v] += xa[v] * yb[v];
      }
  for (int a = 0; a < AB; ++a)
    for (int b = 0; b < BB; ++b) {
      T s = 0;
      for (int64_t v = 0; v < W; ++v) s += acc[a][b][v];
      for (int64_t e = d; e < D; ++e) s += x[(a0 + a) * stride_x + e] * y[(b0 + b) * stride_y + e];
      dots[(a0 + a) * ld + b0 + b] += s;
    }
}

template <typename T>
inline void row_dots(const T* x, const T* y, int64_t stride_x, int64_t stride_y, T* dots, int64_t ld, int64_t na,
                     int64_t nb, int64_t D) {
  int64_t a = 0;
  for (; a + 2 <= na; a += 2) {
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) row_dots_block<T, 2, 4>(x, y, stride_x, stride_y, dots, ld, a, b, D);
    for (; b < nb; ++b) row_dots_block<T, 2, 1>(x, y, stride_x, stride_y, dots, ld, a, b, D);
  }
  for (; a < na; ++a) {
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) row_dots_block<T, 1, 4>(x, y, stride_x, stride_y, dots, ld, a, b, D);
    for (; b < nb; ++b) row_dots_block<T, 1, 1>(x, y, stride_x, stride_y, dots, ld, a, b, D);
  }
}

}  // namespace stafast
