// Included before a csrc/cuda/*.cu source compiled for the host (tests/ops/test_cuda_emulated.py).
// The source registers its host functions with TORCH_LIBRARY_IMPL(stafast_ext, CUDA, m) { m.impl(name, fn); }.
// Here each m.impl(name, fn) defines the op torch.ops.stafast_emu.<name> (schema inferred from fn), which
// runs fn, and so the emulated kernels, on CPU tensors.
#pragma once
#include "cuda_emu.h"

#include <torch/library.h>

namespace cuda_emu {
struct Ops {
  torch::Library& lib;
  template <typename F>
  Ops& impl(const char* name, F&& fn) {
    lib.def(name, std::forward<F>(fn));
    return *this;
  }
};
}  // namespace cuda_emu

#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, key, m) CUDA_EMU_OPS(m, C10_UID)
#define CUDA_EMU_OPS(m, uid) CUDA_EMU_OPS_(m, uid)
#define CUDA_EMU_OPS_(m, uid)                              \
  static void cuda_emu_ops_##uid(::cuda_emu::Ops& m);      \
  TORCH_LIBRARY_FRAGMENT(stafast_emu, lib) {               \
    ::cuda_emu::Ops ops{lib};                              \
    cuda_emu_ops_##uid(ops);                               \
  }                                                        \
  static void cuda_emu_ops_##uid(::cuda_emu::Ops& m)
