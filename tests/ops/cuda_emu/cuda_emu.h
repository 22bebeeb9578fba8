// CUDA kernels executed on the host, for tests without a GPU (tests/ops/test_cuda_emulated.py).
//
// The unchanged csrc/cuda/*.cu sources are compiled as C++ after this header. Every CUDA thread is a
// host thread of its own (a fiber: its own stack and registers); the threads of a block run on one
// OS thread, switching only where CUDA threads wait for each other, so a run is deterministic and
// replays as it happened. Blocks run in turn (several at once on several OS threads); each has its
// own shared memory (__shared__ is thread_local to the OS thread that runs the block).
//
// What a GPU leaves undefined is reported, as an exception from the launch, with the source line:
// - __syncthreads reached by part of a block (a thread exited before it), or by threads at
//   different __syncthreads calls or different passes of one (divergent barriers);
// - a __shfl_*_sync / __syncwarp whose mask names an exited, missing or waiting lane (the lanes
//   named must all reach it), that leaves out the calling lane, or that reads a lane it does not
//   name;
// - waits that can never end (deadlock), and launches past the grid and block limits.
// Threads run lowest index first, or highest first (set_schedule): a missing barrier lets one
// thread run ahead of the others, so the results of the two orders differ from the reference.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <source_location>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>

#define STAFAST_CUDA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local  // per OS thread, which runs one block at a time

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace cuda_emu {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Schedule { lowest_first, highest_first };
enum class ShuffleKind { idx, up, down, bfly, syncwarp };

// Settings for the launches that follow (all threads).
void set_schedule(Schedule s);
void set_check_only(bool on);        // validate launches, run nothing
void set_grid_y_limit(unsigned y);   // a smaller gridDim.y limit than 65535, to reach grid-stride loops
unsigned grid_y_limit();
void set_workers(int n);             // OS threads running blocks (default: the machine's cores)

struct ThreadIds {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
const ThreadIds& ids();  // of the CUDA thread running on this OS thread

void syncthreads(const std::source_location& loc);
// Exchanges `size` bytes of `in` within the warp; the lane's result goes to `out`.
void shuffle(ShuffleKind kind, unsigned mask, const void* in, void* out, std::size_t size, int arg, int width,
             const std::source_location& loc);
// Runs body() as every thread of grid x block (or only checks the configuration).
void run(dim3 grid, dim3 block, std::size_t shared_bytes, const std::function<void()>& body);

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t, Args... args) {
  const std::tuple<std::decay_t<Params>...> bound(static_cast<Params>(args)...);
  run(grid, block, 0, [&] { std::apply(kernel, bound); });
}

template <typename T>
T shuffled(ShuffleKind kind, unsigned mask, T var, int arg, int width, const std::source_location& loc) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16, "shuffles move values of up to 16 bytes");
  T out;
  shuffle(kind, mask, &var, &out, sizeof(T), arg, width, loc);
  return out;
}

}  // namespace cuda_emu

#define threadIdx (::cuda_emu::ids().thread_idx)
#define blockIdx (::cuda_emu::ids().block_idx)
#define blockDim (::cuda_emu::ids().block_dim)
#define gridDim (::cuda_emu::ids().grid_dim)
#define warpSize 32

inline void __syncthreads(const std::source_location& loc = std::source_location::current()) {
  cuda_emu::syncthreads(loc);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const std::source_location& loc = std::source_location::current()) {
  int none = 0;
  cuda_emu::shuffle(cuda_emu::ShuffleKind::syncwarp, mask, &none, &none, sizeof none, 0, 32, loc);
}
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32,
              const std::source_location& loc = std::source_location::current()) {
  return cuda_emu::shuffled(cuda_emu::ShuffleKind::idx, mask, var, src_lane, width, loc);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                 const std::source_location& loc = std::source_location::current()) {
  return cuda_emu::shuffled(cuda_emu::ShuffleKind::up, mask, var, int(delta), width, loc);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                   const std::source_location& loc = std::source_location::current()) {
  return cuda_emu::shuffled(cuda_emu::ShuffleKind::down, mask, var, int(delta), width, loc);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                  const std::source_location& loc = std::source_location::current()) {
  return cuda_emu::shuffled(cuda_emu::ShuffleKind::bfly, mask, var, lane_mask, width, loc);
}

// Atomics on global or shared memory (blocks may run on several OS threads at once).
template <typename T>
T atomicAdd(T* address, T val) {
  return std::atomic_ref<T>(*address).fetch_add(val);
}
template <typename T>
T atomicExch(T* address, T val) {
  return std::atomic_ref<T>(*address).exchange(val);
}
template <typename T>
T atomicCAS(T* address, T compare, T val) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, val);
  return compare;  // the old value, whether or not it was replaced
}
// Device math as the kernels call it, unqualified.
using std::exp;
using std::max;
using std::min;
using std::sqrt;
