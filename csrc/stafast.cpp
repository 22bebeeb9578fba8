// The extension's op schemas (namespace stafast_ext) and the Python module stafast._C.
// Kernels are registered by device in cpu/<op>.cpp and cuda/<op>.cu; stafast/ops/<op>.py
// calls them as the `ext` backend of the public torch.ops.stafast ops (which own autograd).
#include <Python.h>
#include <torch/library.h>

#include "common.h"

extern "C" {
// Importing stafast._C loads this library, which runs the TORCH_LIBRARY registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

static bool has_cuda() {
#ifdef STAFAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(stafast_ext, m) {
  m.def("spatial_softmax_pool(Tensor logits, Tensor feats) -> (Tensor, Tensor)");
  m.def("spatial_softmax_pool_backward(Tensor grad_pooled, Tensor grad_attn, Tensor logits, Tensor feats) -> (Tensor, Tensor)");
  m.def("diversity_penalty(Tensor attn, str kind) -> Tensor");
  m.def("diversity_penalty_backward(Tensor grad, Tensor attn, str kind) -> Tensor");
  m.def("frame_attention(Tensor x, Tensor bias, float scale) -> Tensor");
  m.def("frame_attention_backward(Tensor grad, Tensor x, Tensor bias, float scale) -> (Tensor, Tensor)");
  m.def("has_cuda() -> bool", &has_cuda);
  // The CPU output cache (output_cache.cpp): how much it holds, and a way to give it back.
  m.def("output_cache_bytes() -> int", &stafast::output_cache_bytes);
  m.def("output_cache_clear() -> ()", &stafast::output_cache_clear);
}
