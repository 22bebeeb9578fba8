"""The Triton kernels beyond the shared op tests: every autotune config, strided inputs, the tile limits.

The op tests run the config that the interpreter picks (the first that survives pruning); on a GPU
the autotuner may pick any other, so each config is run here on its own, at shapes that leave
partial tiles everywhere.
"""
import pytest
import torch
import triton

from stafast import ops
from .cases import BACKENDS, DEVICE, attn_inputs, close, like

triton_only = pytest.mark.skipif("triton" not in BACKENDS, reason="the Triton backend does not run here")

# (op, shapes for its inputs): odd sizes, several L, K and D tiles for the smallest configs
CASES = {"spatial_softmax_pool": (3, 5, 37, 150), "diversity_penalty": (3, 5, 37), "frame_attention": (2, 7, 3, 40)}


def run(op: str, shape, dtype=torch.float32):
    """Forward and backward of registered op `op` on random inputs from its spec, with the current
    backend; returns (outputs and gradients, the same from the float64 reference)."""
    registered = ops.OPS[op]
    args = registered.spec.inputs(shape, dtype, DEVICE)
    tensors = [a.requires_grad_() for a in args if isinstance(a, torch.Tensor)]
    out = registered(*args)
    out = out if isinstance(out, tuple) else (out,)
    grads_out = [like(o) for o in out]
    got = list(out) + list(torch.autograd.grad(out, tensors, grads_out))
    args64 = [a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    want = registered.spec.forward(*args64)
    want = want if isinstance(want, tuple) else (want,)
    tensors64 = [a for a in args64 if isinstance(a, torch.Tensor)]
    return got, list(want) + list(torch.autograd.grad(want, tensors64, [g.double() for g in grads_out]))


def autotuned(op: str) -> list:
    from stafast import kernels
    module = {m.__name__.rsplit(".", 1)[-1]: m for m in kernels.OPS}[op]
    return [v for v in vars(module).values() if isinstance(v, triton.runtime.Autotuner)]


# The ops whose Triton kernels autotune (diversity_penalty picks its one config itself)
AUTOTUNED = tuple(op for op in sorted(ops.OPS) if "triton" in BACKENDS and autotuned(op))


@triton_only
def test_every_op_has_a_case():
    assert set(CASES) == set(ops.OPS)


@triton_only
@pytest.mark.parametrize("op", AUTOTUNED)
def test_every_autotune_config(op, monkeypatch):
    kernels = autotuned(op)
    assert kernels, f"{op} has no autotuned kernel"
    for kernel in kernels:
        for config in list(kernel.configs):
            monkeypatch.setattr(kernel, "configs", [config])  # the only choice left: pruning keeps it
            kernel.cache.clear()
            with ops.backend("triton"):
                got, want = run(op, CASES[op])
            for i, (g, w) in enumerate(zip(got, want)):
                close(g, w, torch.float32, f"{kernel.fn.fn.__name__} {config} output {i}")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_strided_inputs(backend_name):
    """feats as the (M, D, L) -> (M, L, D) view of a channels-first map (read in place by Triton),
    and non-contiguous inputs of the other two ops."""
    m, k, l, d = 3, 5, 37, 70
    logits = (2 * torch.randn(m, l, k, dtype=torch.float64, device=DEVICE)).transpose(1, 2).requires_grad_()
    feats = torch.randn(m, d, l, dtype=torch.float64, device=DEVICE).transpose(1, 2).requires_grad_()
    attn = attn_inputs((m, l, k)).transpose(1, 2).detach().requires_grad_()
    x = torch.randn(2, 3, 6, 4, dtype=torch.float64, device=DEVICE).permute(0, 3, 1, 2).requires_grad_()  # (2, 4, 3, 6)
    bias = torch.randn(4, 4, dtype=torch.float64, device=DEVICE).t().requires_grad_()

    def outputs():
        pooled, a = ops.spatial_softmax_pool(logits, feats)
        return pooled, a, ops.diversity_penalty(attn, reduction="none"), ops.frame_attention(x, bias, 0.3)
    with ops.backend(backend_name):
        got = outputs()
        gs = [like(o) for o in got]
        grads = torch.autograd.grad(got, (logits, feats, attn, x, bias), gs)
    with ops.backend("reference"):
        want = outputs()
        want_grads = torch.autograd.grad(want, (logits, feats, attn, x, bias), gs)
    for g, w in zip(list(got) + list(grads), list(want) + list(want_grads)):
        close(g, w, torch.float64, "strided")
    with ops.backend(backend_name):  # the fake (meta) outputs' strides match the real ones for strided feats
        torch.library.opcheck(torch.ops.stafast.spatial_softmax_pool.default, (logits.detach().contiguous(), feats))
        torch.library.opcheck(torch.ops.stafast.spatial_softmax_pool_backward.default,
                              (gs[0], gs[1], logits.detach().contiguous(), feats.detach()))


@triton_only
def test_tile_limits_reach_every_path(monkeypatch):
    """Lowered tile limits send small shapes down the paths that only large ones take otherwise:
    several forward K tiles, backward head groups, diversity K tiles, the frame attention's
    workspace path."""
    from stafast.kernels import diversity_penalty, frame_attention, spatial_softmax_pool
    monkeypatch.setattr(spatial_softmax_pool, "FORWARD_BLOCK_K_MAX", 16)
    monkeypatch.setattr(spatial_softmax_pool, "BACKWARD_BLOCK_K_MAX", {2: 16, 4: 16, 8: 16})
    monkeypatch.setattr(diversity_penalty, "BLOCK_K_MAX", {2: 16, 4: 16, 8: 16})
    monkeypatch.setattr(frame_attention, "N_REGISTER_MAX", 16)
    monkeypatch.setattr(frame_attention, "N_REGISTER_MAX_BACKWARD_OR_FP32", 16)
    for op, shape in (("spatial_softmax_pool", (2, 35, 20, 70)), ("diversity_penalty", (3, 35, 20)),
                      ("frame_attention", (2, 35, 2, 70))):
        for dtype in (torch.float32, torch.float64):
            with ops.backend("triton"):
                got, want = run(op, shape, dtype)
            for i, (g, w) in enumerate(zip(got, want)):
                close(g, w, dtype, f"{op} {dtype} output {i}")
