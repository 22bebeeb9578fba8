"""Training steps: the STA head (everything after the backbone) and the whole model.

fused = the stafast ops in auto mode (the device's fastest backend, CPU ext, GPU triton: the
row records the one that ran), eager = the reference ops in plain PyTorch, compile =
torch.compile of the model with the reference ops traced inline.  One step = forward, OIM +
diversity loss, backward.  GPU: the paper's setting (ResNet-50, B=32 clips x N=6, 256x128, bf16
autocast) with peak memory; CPU: ResNet-18, B=8 x N=6 at 128x64 for the whole model (the paper's
size takes minutes per step on 2 cores).
"""
import pytest
import torch

from harness import DEVICE, bench, device_name
from stafast import ops
from stafast.losses import OIMLoss
from stafast.models import STA

VARIANTS = ["eager", "compile", "fused"]
FUSED = "triton" if DEVICE == "cuda" else "ext"  # what auto mode picks first here
if DEVICE == "cuda":
    WHOLE = dict(arch="resnet50", B=32, N=6, H=256, W=128)
else:
    WHOLE = dict(arch="resnet18", B=8, N=6, H=128, W=64)
AMP = torch.bfloat16 if DEVICE == "cuda" else None


def _skip(variant):
    if variant == "fused" and FUSED not in ops.available_backends(DEVICE):
        pytest.skip(f"fused: backend {FUSED} not available on {DEVICE}")


def _step_fn(model, forward, variant):
    criterion = OIMLoss(128, 64).to(DEVICE)
    fn = torch.compile(forward) if variant == "compile" else forward
    backend = "auto" if variant == "fused" else "reference"

    def step(*inputs):
        with ops.backend(backend):  # the backward too: it runs the ops' _backward ops
            with torch.autocast(DEVICE, dtype=AMP, enabled=AMP is not None):
                out = fn(*inputs)
            loss = criterion(out.embedding, torch.arange(out.embedding.shape[0], device=DEVICE) % 64) + out.diversity_loss
            loss.backward()
        return loss
    return step


@pytest.mark.parametrize("variant", VARIANTS)
def test_sta_head_step(benchmark, variant):
    _skip(variant)
    b, n = 32, 6
    model = STA("resnet18" if DEVICE == "cpu" else "resnet50", num_frames=n).to(DEVICE)
    d = model.feat_dim
    fmap = torch.randn(b * n, d, 8, 4, device=DEVICE)  # res5c maps of a 256x128 input
    step = _step_fn(model, lambda x: model.head(x, b, n), variant)
    bench(benchmark, step, (fmap,), "fwd", f"STA head training step, B={b} N={n} D={d} K=6 L=32, {DEVICE}",
          dict(op="sta_head_step", impl=variant, device=device_name()))


@pytest.mark.parametrize("variant", VARIANTS)
def test_whole_model_step(benchmark, variant):
    _skip(variant)
    w = WHOLE
    model = STA(w["arch"], num_frames=w["N"]).to(DEVICE)
    if DEVICE == "cuda":
        model = model.to(memory_format=torch.channels_last)
    clips = torch.randn(w["B"], w["N"], 3, w["H"], w["W"], device=DEVICE)
    step = _step_fn(model, model, variant)
    bench(benchmark, step, (clips,), "fwd",
          f"whole-model training step, {w['arch']} B={w['B']} N={w['N']} {w['H']}x{w['W']}, {DEVICE}",
          dict(op="model_step", impl=variant, **w))
