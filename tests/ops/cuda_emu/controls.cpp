// The emulator's C entry points (called through ctypes) and its negative controls: small kernels
// with the defects it must report (and one correct kernel, which it must not).
#include <algorithm>
#include <cstring>
#include <map>
#include <string>

#include "cuda_emu.h"

namespace {

constexpr unsigned kFull = 0xffffffffu;

template <typename T>
__device__ T warp_sum(T v, unsigned mask = kFull) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(mask, v, offset);
  return v;
}

// Correct: a block sum through shared memory, then a warp sum (64 threads).
__global__ void block_sum(double* out, double seed) {
  __shared__ double s[64];
  s[threadIdx.x] = seed + threadIdx.x;
  __syncthreads();
  if (threadIdx.x < 32) {
    const double v = warp_sum(s[threadIdx.x] + s[threadIdx.x + 32]);
    if (threadIdx.x == 0) out[blockIdx.x] = v;
  }
}

// The barrier between the writes and the reads is missing: thread 0 may read slots not yet written.
__global__ void block_sum_missing_barrier(double* out, double seed) {
  __shared__ double s[64];
  s[threadIdx.x] = seed + threadIdx.x;
  if (threadIdx.x == 0) {
    double v = 0;
    for (int i = 0; i < 64; ++i) v += s[i];
    out[blockIdx.x] = v;
  }
}

__global__ void divergent_barrier(double* out, double) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[blockIdx.x] = 1;
}

__global__ void barrier_after_early_exit(double* out, double) {
  if (threadIdx.x >= 40) return;
  __syncthreads();
  out[blockIdx.x] = 1;
}

__global__ void barrier_in_a_loop_some_skip(double* out, double) {
  for (int i = 0; i < 3; ++i)
    if (i != 1 || threadIdx.x % 2 == 0) __syncthreads();
  out[blockIdx.x] = 1;
}

// Half the warp shuffles with the full mask; the other half returns.
__global__ void partial_warp_shuffle(double* out, double seed) {
  double v = seed + threadIdx.x;
  if (threadIdx.x % 32 >= 16) return;
  v = warp_sum(v);
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

// Half the warp shuffles with the full mask while the other half waits at a barrier.
__global__ void shuffle_against_barrier(double* out, double seed) {
  double v = seed + threadIdx.x;
  if (threadIdx.x % 32 < 16) v = warp_sum(v);
  __syncthreads();
  out[blockIdx.x] = v;
}

// Every lane calls with a mask naming lanes 0-15 only.
__global__ void mask_leaves_out_the_caller(double* out, double seed) {
  out[blockIdx.x] = warp_sum(seed + threadIdx.x, 0x0000ffffu);
}

// Lanes 0-15 shuffle among themselves, but lane 15 reads lane 16.
__global__ void reads_an_unnamed_lane(double* out, double seed) {
  if (threadIdx.x % 32 < 16) out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, seed + threadIdx.x, 1);
}

// A full-mask warp sum in a block of 48 threads: its second warp has 16 lanes.
__global__ void full_mask_in_a_partial_warp(double* out, double seed) {
  const double v = warp_sum(seed + threadIdx.x);
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

// Correct: every thread of every block adds into the same two slots (blocks run on several OS threads).
__global__ void atomic_sums(double* out, double seed) {
  atomicAdd(out, 1.0);
  atomicAdd(out + 1, seed * threadIdx.x);
}

struct Control {
  void (*kernel)(double*, double);
  dim3 grid, block;
};

const std::map<std::string, Control>& controls() {
  static const std::map<std::string, Control> all = {
      {"block_sum", {block_sum, dim3(3), dim3(64)}},
      {"atomic_sums", {atomic_sums, dim3(7), dim3(64)}},
      {"block_sum_missing_barrier", {block_sum_missing_barrier, dim3(3), dim3(64)}},
      {"divergent_barrier", {divergent_barrier, dim3(2), dim3(64)}},
      {"barrier_after_early_exit", {barrier_after_early_exit, dim3(2), dim3(64)}},
      {"barrier_in_a_loop_some_skip", {barrier_in_a_loop_some_skip, dim3(1), dim3(64)}},
      {"partial_warp_shuffle", {partial_warp_shuffle, dim3(1), dim3(64)}},
      {"shuffle_against_barrier", {shuffle_against_barrier, dim3(1), dim3(64)}},
      {"mask_leaves_out_the_caller", {mask_leaves_out_the_caller, dim3(1), dim3(32)}},
      {"reads_an_unnamed_lane", {reads_an_unnamed_lane, dim3(1), dim3(32)}},
      {"full_mask_in_a_partial_warp", {full_mask_in_a_partial_warp, dim3(1), dim3(48)}},
      {"grid_y_over_the_limit", {block_sum, dim3(1, 65536), dim3(64)}},
      {"block_over_1024_threads", {block_sum, dim3(1), dim3(32, 33)}},
  };
  return all;
}

int report(const std::string& what, char* message, int size) {
  std::snprintf(message, std::size_t(size), "%s", what.c_str());
  return 1;
}

}  // namespace

extern "C" {

// schedule: 0 lowest thread first, 1 highest first; grid_y_limit 0 keeps 65535; workers 0: the cores.
void cuda_emu_configure(int schedule, int check_only, unsigned grid_y_limit, int workers) {
  cuda_emu::set_schedule(schedule ? cuda_emu::Schedule::highest_first : cuda_emu::Schedule::lowest_first);
  cuda_emu::set_check_only(check_only != 0);
  cuda_emu::set_grid_y_limit(grid_y_limit ? grid_y_limit : 65535);
  cuda_emu::set_workers(workers);
}

// Names of the controls, one per line.
const char* cuda_emu_controls() {
  static std::string names;
  if (names.empty())
    for (const auto& [name, _] : controls()) names += name + "\n";
  return names.c_str();
}

// Runs a control on out (64 doubles, zeroed first); 0, or 1 with the emulator's report in message.
int cuda_emu_run_control(const char* name, double* out, double seed, char* message, int size) {
  const auto it = controls().find(name);
  if (it == controls().end()) return report(std::string("no control named ") + name, message, size);
  std::fill(out, out + 64, 0.0);
  try {
    cuda_emu::launch(it->second.kernel, it->second.grid, it->second.block, nullptr, out, seed);
  } catch (const cuda_emu::Error& e) {
    return report(e.what(), message, size);
  }
  message[0] = '\0';
  return 0;
}

}  // extern "C"
