"""stafast.nn: each block against the fp64 spec (stafast.ops.reference + the equations), STA against
an fp64 oracle that reads its parameters by name, torch.compile(fullgraph=True) of a model built
from the blocks, and the README's example."""
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

from stafast import ops
from stafast.checkpoint import FORMAT, load_model
from stafast.config import TrainConfig
from stafast.models import STA
from stafast.nn import DiversityPenalty, FrameEnhancement, SpatialAttention, TemporalAttention
from stafast.ops import reference

# The blocks call stafast.ops, whose backends are compared with each other in tests/ops.
BACKENDS = ["reference", "auto"]
README = os.path.join(os.path.dirname(__file__), "..", "README.md")
TOY = dict(arch="resnet18", num_frames=3, num_heads=2, hidden=8, embed_dim=16)


def randomise(module, scale=0.1):
    """Non-trivial values for the zero-initialised parameters (enhancement FC, temporal weights)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module


def close(got, want, what, rtol=1e-4, atol=2e-5):
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# ------------------------------------------------------------------------- fp64 spec of each block
def spatial64(w, f):
    """Eqs. 1-3 in float64 from the weights w = (hidden.weight, hidden.bias, out_weight, out_bias)."""
    hw, hb, ow, ob = (t.double() for t in w)
    m, l, _ = f.shape
    k, d = ow.shape
    h = torch.relu(f.double() @ hw.T + hb).view(m, l, k, d)
    e = torch.einsum("mlkd,kd->mkl", h, ow) + ob[:, None]
    return reference.spatial_softmax_pool(e, f.double())


def enhance64(w, x, scale):
    """Eq. 4 / supplementary Eqs. 1-4 in float64, w = (weight W, decay, bias b, fc.weight, fc.bias)."""
    ww, decay, bb, fw, fb = (t.double() for t in w)
    psi = ww * decay + bb[None, :]
    return reference.frame_attention(x.double(), psi, scale) @ fw.T + fb + x.double()


def temporal64(w, x):
    """Eqs. 11-13 in float64 (softmax over the N frames)."""
    tw, tb = (t.double() for t in w)
    t = torch.softmax(torch.einsum("bnkd,kd->bnk", x.double(), tw) + tb, dim=1)
    return torch.einsum("bnk,bnkd->bkd", t, x.double()), t


@pytest.mark.parametrize("backend", BACKENDS)
def test_spatial_attention_matches_the_fp64_spec(backend):
    mod = randomise(SpatialAttention(20, num_heads=3, hidden=7))
    f = torch.randn(5, 11, 20)
    with ops.backend(backend):
        pooled, attn = mod(f)
    want_pooled, want_attn = spatial64((mod.hidden.weight, mod.hidden.bias, mod.out_weight, mod.out_bias), f)
    close(pooled, want_pooled, "pooled")
    close(attn, want_attn, "attn")
    torch.testing.assert_close(attn.sum(-1), torch.ones(5, 3))
    (pooled.square().sum() + attn[:, 0].sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["hellinger", "l2"])
def test_diversity_penalty_matches_the_fp64_spec(backend, kind):
    attn = torch.softmax(torch.randn(7, 3, 13), -1)
    with ops.backend(backend):
        q, per_frame = DiversityPenalty(kind)(attn), DiversityPenalty(kind, "none")(attn)
    want = reference.diversity_penalty(attn.double(), kind)
    close(per_frame, want, "per frame")
    close(q, want.mean(), "mean")
    # Eq. 9 written out: ||sqrt(S) sqrt(S)^T - I||_F^2
    r = attn[0].double().sqrt() if kind == "hellinger" else attn[0].double()
    close(per_frame[0], ((r @ r.T - torch.eye(3, dtype=torch.float64)) ** 2).sum(), "Eq. 9/10 by hand")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", ["sqrt", "none"])
def test_frame_enhancement_matches_the_fp64_spec(backend, scale):
    mod = randomise(FrameEnhancement(4, 9, sigma=1.5, scale=scale))
    x = torch.randn(3, 4, 2, 9) * 0.5
    with ops.backend(backend):
        out = mod(x)
    s = 1 / math.sqrt(9) if scale == "sqrt" else 1.0
    close(out, enhance64((mod.weight, mod.decay, mod.bias, mod.fc.weight, mod.fc.bias), x, s), "x_hat")
    i = torch.arange(4.0)
    torch.testing.assert_close(mod.decay, torch.exp(-(i[:, None] - i[None, :]).abs() / 1.5))
    # A fresh block is the identity (zero-initialised FC): E(x) = x.
    torch.testing.assert_close(FrameEnhancement(4, 9)(x), x)


def test_temporal_attention_matches_the_fp64_spec():
    mod = randomise(TemporalAttention(3, 10), scale=0.5)
    x = torch.randn(2, 5, 3, 10)
    clip, t = mod(x)
    want_clip, want_t = temporal64((mod.weight, mod.bias), x)
    close(clip, want_clip, "clip")
    close(t, want_t, "weights")
    torch.testing.assert_close(t.sum(1), torch.ones(2, 3))
    # zero-initialised: uniform weights, i.e. average pooling over frames
    clip0, t0 = TemporalAttention(3, 10)(x)
    torch.testing.assert_close(clip0, x.mean(1))


def test_bad_inputs_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"f must be \(M, L, D\) with D = 20, got shape \(5, 11, 19\)"):
        SpatialAttention(20, 2, 4)(torch.randn(5, 11, 19))
    with pytest.raises(ValueError, match=r"built for num_frames=4 .* got x with N=3"):
        FrameEnhancement(4, 9)(torch.randn(2, 3, 2, 9))
    with pytest.raises(ValueError, match=r"built for K=3 heads but got x with K=2"):
        TemporalAttention(3, 10)(torch.randn(2, 5, 2, 10))
    with pytest.raises(ValueError, match=r"kind must be one of \('hellinger', 'l2'\), got 'kl'"):
        DiversityPenalty("kl")
    with pytest.raises(ValueError, match=r"FrameEnhancement: scale must be one of \('sqrt', 'none'\), got 'log'"):
        FrameEnhancement(4, 9, scale="log")


# ------------------------------------------------------------------------------- STA from the blocks
def sta_head64(sd: dict, fmap: torch.Tensor, b: int, n: int, k: int) -> dict:
    """Everything after the backbone in float64, reading the parameters by their names (spelled out
    here: the submodules spatial_attention, frame_enhancement, temporal_attention and embed)."""
    sd = {key: v.double() for key, v in sd.items() if v.is_floating_point()}
    f = fmap.double().flatten(2).transpose(1, 2)
    d = f.shape[-1]
    pooled, attn = spatial64([sd[f"spatial_attention.{w}"] for w in ("hidden.weight", "hidden.bias", "out_weight",
                                                                     "out_bias")], f)
    x = enhance64([sd[f"frame_enhancement.{w}"] for w in ("weight", "decay", "bias", "fc.weight", "fc.bias")],
                  pooled.view(b, n, k, d), 1 / math.sqrt(d))
    clip, t = temporal64((sd["temporal_attention.weight"], sd["temporal_attention.bias"]), x)
    emb = F.normalize(clip.flatten(1) @ sd["embed.weight"].T + sd["embed.bias"], dim=1)
    return dict(embedding=emb, diversity_loss=reference.diversity_penalty(attn, "hellinger").mean(),
                attention_maps=attn.view(b, n, k, -1), temporal_weights=t)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sta_matches_the_fp64_oracle(backend, tmp_path):
    """STA built from stafast.nn equals the fp64 oracle, directly and through a checkpoint file as
    stafast.train writes it."""
    model = randomise(STA(**TOY), 0.05).eval()
    clips = torch.randn(2, 3, 3, 64, 32)
    with torch.no_grad(), ops.backend(backend):
        fmap = model.backbone(clips.flatten(0, 1))
        out = model.head(fmap, 2, 3)
        whole = model(clips)
    want = sta_head64(model.state_dict(), fmap, 2, 3, TOY["num_heads"])
    for name, value in want.items():
        close(getattr(out, name), value, name)
    torch.testing.assert_close(whole.embedding, out.embedding)
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": FORMAT, "config": TrainConfig.create().to_dict(), "model": model.state_dict(),
                "model_config": TOY}, path)
    loaded, _ = load_model(str(path))
    with torch.no_grad(), ops.backend(backend):
        torch.testing.assert_close(loaded(clips).embedding, whole.embedding)


def test_sta_holds_one_block_of_each_kind():
    model = STA(**TOY)
    assert isinstance(model.spatial_attention, SpatialAttention)
    assert isinstance(model.diversity_penalty, DiversityPenalty)
    assert isinstance(model.frame_enhancement, FrameEnhancement)
    assert isinstance(model.temporal_attention, TemporalAttention)
    base = STA(arch="resnet18", spatial_pooling="avg", diversity_kind="none", temporal_pooling="avg", enhance=False)
    assert base.spatial_attention is base.diversity_penalty is base.frame_enhancement is base.temporal_attention is None
    assert {k.split(".")[0] for k in base.state_dict()} == {"backbone", "embed"}


# ------------------------------------------------------------------ the README's model, compiled
def readme_example() -> str:
    text = open(README).read()
    section = text.split("## The paper's blocks in your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs():
    scope = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    embedding, q = scope["embedding"], scope["q"]
    assert embedding.shape == (2, 128) and q.dim() == 0 and q.item() > 0
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2))
    (embedding[:, 0].sum() + q).backward()
    assert scope["model"].spatial_attention.hidden.weight.grad.abs().sum() > 0


def tiny_cnn(dim=16):
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, dim, 3, stride=2, padding=1), torch.nn.ReLU())


@pytest.mark.slow
def test_compile_fullgraph_of_a_model_built_from_the_blocks():
    """The README's VideoReID on a tiny CNN: one graph (fullgraph=True), same outputs and gradients."""
    source = readme_example().split("\nmodel = ")[0]  # the class, without the MobileNet instance
    scope = {}
    exec(compile(source, "README.md", "exec"), scope)
    model = randomise(scope["VideoReID"](tiny_cnn(), dim=16, num_frames=3, num_heads=2, embed_dim=8), 0.05)
    clips = torch.randn(2, 3, 3, 16, 8)
    compiled = torch.compile(model, fullgraph=True)
    emb, q = compiled(clips)
    grads = torch.autograd.grad(emb[:, 0].sum() + q, list(model.parameters()))
    want_emb, want_q = model(clips)
    want = torch.autograd.grad(want_emb[:, 0].sum() + want_q, list(model.parameters()))
    torch.testing.assert_close(emb, want_emb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(q, want_q, rtol=1e-4, atol=1e-5)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-5)


def test_float64_stays_float64_in_every_block_and_in_sta():
    """An fp64 model computes in fp64 end to end (outputs and gradients; the fp64 gradcheck of
    TemporalAttention fails by far when its softmax runs in fp32), while 16-bit inputs still give
    float32 temporal weights."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    temporal = randomise(TemporalAttention(3, 5)).double()
    assert all(o.dtype == torch.float64 for o in temporal(x))
    assert torch.autograd.gradcheck(lambda v: temporal(v), (x,))
    assert TemporalAttention(3, 5).to(torch.bfloat16)(x.detach().bfloat16())[1].dtype == torch.float32
    f = torch.randn(6, 7, 5, dtype=torch.float64)
    assert all(o.dtype == torch.float64 for o in SpatialAttention(5, 3, 4).double()(f))
    assert DiversityPenalty()(torch.softmax(f[:, :3], -1)).dtype == torch.float64
    assert FrameEnhancement(4, 5).double()(x).dtype == torch.float64
    fmap = torch.randn(2 * 3, 512, 4, 2, dtype=torch.float64)  # the backbone's output (B*N, D, h, w)
    for spatial in ("attention", "avg"):
        model = randomise(STA(spatial_pooling=spatial, **TOY), 0.05).double()
        out = model.head(fmap, 2, 3)
        tensors = {k: getattr(out, k) for k in ("embedding", "feature", "diversity_loss", "attention_maps",
                                               "temporal_weights") if getattr(out, k) is not None}
        assert {k: v.dtype for k, v in tensors.items()} == {k: torch.float64 for k in tensors}, spatial
        (out.embedding.sum() + out.diversity_loss).backward()
        assert {p.grad.dtype for p in model.parameters() if p.grad is not None} == {torch.float64}
