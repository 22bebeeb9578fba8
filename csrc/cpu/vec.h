// Vectors of one register (GCC/Clang vector extension) for the CPU kernels' register-blocked loops:
// a grid of accumulators written as named vectors stays in registers, where the compiler leaves
// unrolled arrays of accumulators on the stack.
#pragma once
#include <cstdint>
#include <cstring>

namespace stafast {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else  // SSE, NEON
constexpr int kVecBytes = 16;
#endif
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(kVecBytes)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kVecLanes = kVecBytes / sizeof(T);

template <typename T>
inline Vec<T> load_vec(const T* p) {  // unaligned
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void store_vec(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof v);
}

// Register tiles need compile-time sizes: in_tiles<N>(n, f) calls f.template operator()<S>(i0) over
// [0, n) in tiles of S = N, and covers the last n % N in one smaller tile.
template <int N, typename F>
inline void last_tile(int64_t rest, int64_t i0, F& f) {
  if constexpr (N > 1) {
    if (rest == N - 1) return f.template operator()<N - 1>(i0);
    last_tile<N - 1>(rest, i0, f);
  }
}

template <int N, typename F>
inline void in_tiles(int64_t n, F&& f) {
  int64_t i = 0;
  for (; i + N <= n; i += N) f.template operator()<N>(i);
  last_tile<N>(n - i, i, f);
}

}  // namespace stafast
