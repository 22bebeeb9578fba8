import pytest
import torch

from stafast.models import ABLATIONS, STA, build_model

TOY = dict(arch="resnet18", num_frames=3, hidden=8, embed_dim=16)


def clips(b=2, n=3):
    return torch.randn(b, n, 3, 64, 32)


def test_forward_backward_toy():
    model = STA(num_heads=2, **TOY)
    out = model(clips())
    assert out.embedding.shape == (2, 16)
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(2))
    assert out.spatial.shape == (2, 3, 2, 2) and out.grid == (2, 1)
    torch.testing.assert_close(out.spatial.sum(-1), torch.ones(2, 3, 2))
    assert out.temporal.shape == (2, 3, 2)
    (out.embedding[:, 0].sum() + out.diversity).backward()
    for name in ("spatial.hidden.weight", "spatial.out_weight", "enhance.fc.weight", "enhance.weight",
                 "temporal.weight", "embed.weight", "backbone.body.0.weight"):
        p = dict(model.named_parameters())[name]
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.backbone.body[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_every_table1_row_runs(ablation):
    model = build_model(ablation, num_heads=2, **TOY)
    out = model(clips())
    assert out.embedding.shape == (2, 16)
    if ABLATIONS[ablation]["diversity"] == "none":
        assert out.diversity.item() == 0
    else:
        assert out.diversity.item() > 0
    out.embedding.sum().backward()


@pytest.mark.parametrize("k", [1, 2, 4, 6, 8])
def test_table2_heads(k):
    out = STA(num_heads=k, **TOY)(clips(1))
    assert out.spatial.shape[2] == k


def test_last_stride_one_doubles_the_grid():
    out = STA(num_heads=2, last_stride=1, **TOY)(clips(1))
    assert out.grid == (4, 2)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"clips of shape \(B, N, 3, H, W\), got \(2, 3, 64, 32\)"):
        STA(**TOY)(torch.randn(2, 3, 64, 32))
    with pytest.raises(ValueError, match=r"built for num_frames=3.*got clips with N=4"):
        STA(**TOY)(clips(1, 4))
    with pytest.raises(ValueError, match=r"temporal must be one of"):
        STA(temporal="lstm", **TOY)
    with pytest.raises(ValueError, match="unknown ablation"):
        build_model("spaatn+q+lstm")


def test_backbone_weights_from_local_file(tmp_path):
    import torchvision
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    model = STA(backbone_weights=str(path), **TOY)
    torch.testing.assert_close(model.backbone.body[0].weight, net.conv1.weight)
    with pytest.raises(FileNotFoundError, match=r"missing.pth.*never downloads"):
        STA(backbone_weights=str(tmp_path / "missing.pth"), **TOY)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not match this ResNet"):
        STA(backbone_weights=str(tmp_path / "bad.pth"), **TOY)
