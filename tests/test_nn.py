"""stafast.nn: each block against the fp64 spec (stafast.ops.reference + the equations), STA against
an fp64 oracle that reads the parameter names of older checkpoints, torch.compile(fullgraph=True) of
a model built from the blocks, and the README's example."""
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

from stafast import ops
from stafast.checkpoint import load_model
from stafast.models import STA, upgrade_state_dict
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
    with pytest.raises(ValueError, match="scale must be 'sqrt' or 'none'"):
        FrameEnhancement(4, 9, scale="log")


# ------------------------------------------------------------------- STA from the blocks, old names
# The names a checkpoint written before stafast.nn holds (spelled out here, independently of
# stafast.models.LEGACY_NAMES).
OLD = [("spatial.hidden.weight", "att_hidden.weight"), ("spatial.hidden.bias", "att_hidden.bias"),
       ("spatial.out_weight", "att_out_weight"), ("spatial.out_bias", "att_out_bias"),
       ("enhance.decay", "enhance_decay"), ("enhance.weight", "enhance_weight"), ("enhance.bias", "enhance_bias"),
       ("enhance.fc.weight", "enhance_fc.weight"), ("enhance.fc.bias", "enhance_fc.bias"),
       ("temporal.weight", "temporal_weight"), ("temporal.bias", "temporal_bias")]


def old_layout(state: dict) -> dict:
    renamed = dict(OLD)
    old = {renamed.get(k, k): v.clone() for k, v in state.items()}
    assert not any(k.startswith(("spatial.", "enhance.", "temporal.")) for k in old)
    return old


def sta_head64(sd: dict, fmap: torch.Tensor, b: int, n: int, k: int, hidden: int) -> dict:
    """Everything after the backbone in float64, reading the old parameter names."""
    sd = {key: v.double() for key, v in sd.items() if v.is_floating_point()}
    f = fmap.double().flatten(2).transpose(1, 2)
    d = f.shape[-1]
    pooled, attn = spatial64((sd["att_hidden.weight"], sd["att_hidden.bias"], sd["att_out_weight"],
                              sd["att_out_bias"]), f)
    x = enhance64((sd["enhance_weight"], sd["enhance_decay"], sd["enhance_bias"], sd["enhance_fc.weight"],
                   sd["enhance_fc.bias"]), pooled.view(b, n, k, d), 1 / math.sqrt(d))
    clip, t = temporal64((sd["temporal_weight"], sd["temporal_bias"]), x)
    emb = F.normalize(clip.flatten(1) @ sd["embed.weight"].T + sd["embed.bias"], dim=1)
    return dict(embedding=emb, diversity=reference.diversity_penalty(attn, "hellinger").mean(),
                spatial=attn.view(b, n, k, -1), temporal=t)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sta_from_an_old_checkpoint_matches_the_fp64_oracle(backend, tmp_path):
    """A state dict with the old names loads (strict) into the STA built from stafast.nn, and its
    outputs equal the fp64 oracle computed from those old names."""
    old = old_layout(randomise(STA(**TOY), 0.05).state_dict())
    model = STA(**TOY).eval()
    model.load_state_dict(old)  # strict: every old name maps to a current one
    clips = torch.randn(2, 3, 3, 64, 32)
    with torch.no_grad(), ops.backend(backend):
        fmap = model.backbone(clips.flatten(0, 1))
        out = model.head(fmap, 2, 3)
        whole = model(clips)
    want = sta_head64(old, fmap, 2, 3, TOY["num_heads"], TOY["hidden"])
    for name, value in want.items():
        close(getattr(out, name), value, name)
    torch.testing.assert_close(whole.embedding, out.embedding)
    # the same weights through a checkpoint file, as stafast.train writes it
    path = tmp_path / "old.pt"
    torch.save({"model": old, "model_config": dict(TOY, enhance=True, temporal="attention"), "args": {}}, path)
    loaded, _ = load_model(str(path))
    with torch.no_grad(), ops.backend(backend):
        torch.testing.assert_close(loaded(clips).embedding, whole.embedding)


def test_upgrade_state_dict_renames_only_the_old_names():
    model = STA(**TOY)
    current = model.state_dict()
    old = old_layout(current)
    up = upgrade_state_dict(old)
    assert list(up) == list(current)  # same names in the same order
    assert upgrade_state_dict(current).keys() == current.keys()
    wrapped = upgrade_state_dict({"module." + k: v for k, v in old.items()}, prefix="module.")
    assert set(wrapped) == {"module." + k for k in current}
    # a state dict that mixes in an unknown name still fails loudly
    with pytest.raises(RuntimeError, match="Unexpected key.*att_extra"):
        model.load_state_dict({**old, "att_extra": torch.zeros(1)})


def test_sta_holds_one_block_of_each_kind():
    model = STA(**TOY)
    assert isinstance(model.spatial, SpatialAttention) and isinstance(model.diversity, DiversityPenalty)
    assert isinstance(model.enhance, FrameEnhancement) and isinstance(model.temporal, TemporalAttention)
    base = STA(arch="resnet18", spatial="none", diversity="none", temporal="avg", enhance=False)
    assert base.spatial is base.diversity is base.enhance is base.temporal is None
    assert not any(k.startswith(("spatial.", "enhance.", "temporal.")) for k in base.state_dict())


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
    assert scope["model"].spatial.hidden.weight.grad.abs().sum() > 0


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
