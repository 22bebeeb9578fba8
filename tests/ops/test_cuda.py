"""What only a GPU shows: determinism of the backward passes at the paper's sizes, the frame
attention past the grid's y limit, the CUDA wrappers' checks on CUDA tensors, OIM's table update.

bench/gpu_check.sh --stage ops runs these with STAFAST_TEST_DEVICE=cuda; on the CPU the
determinism tests run at a small size (the dry run's check that they work) and the others skip.
"""
import pytest
import torch

from stafast import ops
from stafast.ops import reference
from .cases import BACKENDS, DEVICE, attn_inputs, close, fa_inputs, like, ssp_inputs

cuda_only = pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA tensors (STAFAST_TEST_DEVICE=cuda)")
FUSED = [b for b in BACKENDS if b != "reference" and (b != "triton" or DEVICE == "cuda")]
# The paper's per-step sizes on a GPU (B = 32 clips x N = 6 frames, K = 6, L = 32, D = 2048): there
# the pooling backward's D splits are many, so an order that varied would show.
PAPER = DEVICE == "cuda"
SHAPES = {"spatial_softmax_pool": (192, 6, 32, 2048) if PAPER else (6, 6, 32, 70),
          "diversity_penalty": (192, 6, 32) if PAPER else (6, 6, 32),
          "frame_attention": (32, 6, 6, 2048) if PAPER else (2, 6, 6, 70)}
DTYPES = [torch.bfloat16, torch.float32] if DEVICE == "cuda" else [torch.float32]


def backward(op: str, dtype: torch.dtype):
    """A function running op's backward on fixed inputs, returning the input gradients."""
    if op == "spatial_softmax_pool":
        inputs, fn = ssp_inputs(SHAPES[op], dtype, requires_grad=True), ops.spatial_softmax_pool
    elif op == "diversity_penalty":
        inputs, fn = (attn_inputs(SHAPES[op], dtype, requires_grad=True),), ops.diversity_penalty
    else:
        x, bias, scale = fa_inputs(SHAPES[op], dtype, requires_grad=True)
        inputs, fn = (x, bias), lambda x, b: ops.frame_attention(x, b, scale)
    out = fn(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    grads = [like(o) for o in out]
    return lambda: torch.autograd.grad(out, inputs, grads, retain_graph=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("backend_name", FUSED)
@pytest.mark.parametrize("op", list(SHAPES))
def test_backward_is_deterministic(op, backend_name, dtype):
    """Two backward runs on the same inputs give bit-identical gradients (what --deterministic promises)."""
    with ops.backend(backend_name):
        run = backward(op, dtype)
        first, second = run(), run()
    for i, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b), f"{op} {backend_name} {dtype}: gradient {i} changed between runs by up to " \
                                  f"{(a.double() - b.double()).abs().max().item():.3g}"


@cuda_only
@pytest.mark.parametrize("backend_name", FUSED)
def test_frame_attention_past_the_grid_y_limit(backend_name):
    """N = 520 frames: 270,400 (i, j) pairs, more blocks of 4 than gridDim.y's 65,535."""
    x, bias, scale = fa_inputs((1, 520, 1, 8), torch.float32, requires_grad=True)
    with ops.backend(backend_name):
        out = ops.frame_attention(x, bias, scale)
        g = like(out)
        grads = torch.autograd.grad(out, (x, bias), g)
    x64, b64 = x.detach().double(), bias.detach().double()
    close(out, reference.frame_attention(x64, b64, scale), torch.float32, "out")
    want = reference.frame_attention_backward(g.double(), x64, b64, scale)
    close(grads[0], want[0], torch.float32, "grad x")
    close(grads[1], want[1], torch.float32, "grad bias")


@cuda_only
@pytest.mark.parametrize("call, match", [
    (lambda: torch.ops.stafast_ext.spatial_softmax_pool(torch.randn(2, 3, 4, device="cuda"),
                                                        torch.randn(2, 5, 6, device="cuda")),
     r"feats must be \(M, L, D\) = \(2, 4, D\)"),
    (lambda: torch.ops.stafast_ext.spatial_softmax_pool(torch.randn(2, 3, 4, device="cuda"), torch.randn(2, 4, 6)),
     r"feats must be on logits's device cuda:0, got cpu"),
    (lambda: torch.ops.stafast_ext.frame_attention(torch.randn(2, 3, 1, 4, device="cuda"),
                                                   torch.randn(3, 2, device="cuda"), 1.0),
     r"bias must be \(N, N\) = \(3, 3\)"),
    (lambda: torch.ops.stafast_ext.diversity_penalty_backward(torch.randn(3, device="cuda"),
                                                              torch.rand(2, 3, 4, device="cuda"), "l2"),
     r"grad must be \(M\) = \(2\)"),
])
def test_cuda_wrappers_check_shapes_and_devices(call, match):
    if "ext" not in BACKENDS:
        pytest.skip("the extension has no CUDA kernels here")
    with pytest.raises(RuntimeError, match=match):
        call()


def test_oim_table_update_is_deterministic():
    """Many samples of few ids (where atomic adds would race): two updates of one table are bit-identical."""
    from stafast.losses.oim import update_tables
    lut = torch.nn.functional.normalize(torch.randn(625, 2048, device=DEVICE), dim=1)
    x = torch.nn.functional.normalize(torch.randn(512, 2048, device=DEVICE), dim=1)
    y = torch.randint(0, 4, (512,), device=DEVICE)
    tables = []
    for _ in range(2):
        t = lut.clone()
        update_tables(t, torch.zeros(0, 2048, device=DEVICE), torch.zeros((), dtype=torch.long, device=DEVICE), x, y,
                      0.5)
        tables.append(t)
    assert torch.equal(*tables)
