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
    assert out.attention_maps.shape == (2, 3, 2, 2) and out.grid == (2, 1)
    torch.testing.assert_close(out.attention_maps.sum(-1), torch.ones(2, 3, 2))
    assert out.temporal_weights.shape == (2, 3, 2)
    (out.embedding[:, 0].sum() + out.diversity_loss).backward()
    for name in ("spatial_attention.hidden.weight", "spatial_attention.out_weight", "frame_enhancement.fc.weight",
                 "frame_enhancement.weight", "temporal_attention.weight", "embed.weight", "backbone.body.0.weight"):
        p = dict(model.named_parameters())[name]
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.backbone.body[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_every_table1_row_runs(ablation):
    model = build_model(ablation, num_heads=2, **TOY)
    out = model(clips())
    assert out.embedding.shape == (2, 16)
    if ABLATIONS[ablation]["diversity_kind"] == "none":
        assert out.diversity_loss.item() == 0
    else:
        assert out.diversity_loss.item() > 0
    out.embedding.sum().backward()


@pytest.mark.parametrize("k", [1, 2, 4, 6, 8])
def test_table2_heads(k):
    out = STA(num_heads=k, **TOY)(clips(1))
    assert out.attention_maps.shape[2] == k


def test_last_stride_one_doubles_the_grid():
    out = STA(num_heads=2, last_stride=1, **TOY)(clips(1))
    assert out.grid == (4, 2)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"clips of shape \(B, N, 3, H, W\), got \(2, 3, 64, 32\)"):
        STA(**TOY)(torch.randn(2, 3, 64, 32))
    with pytest.raises(ValueError, match=r"built for num_frames=3.*got clips with N=4"):
        STA(**TOY)(clips(1, 4))
    with pytest.raises(ValueError, match=r"STA: temporal_pooling must be one of \('attention', 'avg', 'max'\), got 'lstm'"):
        STA(temporal_pooling="lstm", **TOY)
    with pytest.raises(ValueError, match=r"STA: ablation must be one of \('baseline', .*got 'spaatn\+q\+lstm'"):
        build_model("spaatn+q+lstm")
    with pytest.raises(ValueError, match="STA: enhance_scale must be one of"):
        STA(enhance=False, enhance_scale="log", **TOY)


def test_an_ablation_sets_its_fields_and_a_contradicting_setting_is_an_error():
    """The one rule for an ablation and explicit settings (build_model here, TrainConfig in test_train)."""
    base = build_model("baseline", num_heads=2, temporal_pooling="avg", **TOY)  # repeating the row's value is fine
    assert (base.spatial_pooling, base.temporal_pooling, base.diversity_kind) == ("avg", "avg", "none")
    assert base.spatial_attention is base.frame_enhancement is None
    with pytest.raises(ValueError, match=r"ablation 'baseline' .* temporal_pooling='attention' contradicts"):
        build_model("baseline", temporal_pooling="attention", **TOY)


def test_backbone_weights_from_local_file(tmp_path):
    import torchvision
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    model = STA(backbone_weights=str(path), **TOY)
    torch.testing.assert_close(model.backbone.body[0].weight, net.conv1.weight)
    with pytest.raises(FileNotFoundError, match=r"missing.pth' does not exist; expected a torchvision ResNet state dict"):
        STA(backbone_weights=str(tmp_path / "missing.pth"), **TOY)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not match this ResNet"):
        STA(backbone_weights=str(tmp_path / "bad.pth"), **TOY)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A torch hub cache in tmp_path and no network: a download attempt fails as it does offline."""
    import urllib.error
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    attempts = []

    def no_network(url, dst, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints", attempts


def test_imagenet_weights_offline_name_the_file_and_where_to_put_it(offline_hub):
    import torchvision
    folder, attempts = offline_hub
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    want = str(folder / url.rsplit("/", 1)[1])
    with pytest.raises(FileNotFoundError) as e:
        STA(backbone_weights="imagenet", **TOY)
    assert attempts == [url]
    message = str(e.value)
    assert f"cannot download {url}" in message and f"place that file at {want}" in message
    assert "torch hub cache" in message and "--backbone-weights PATH" in message


def test_imagenet_weights_from_the_torch_hub_cache(offline_hub):
    """What torchvision downloaded once (here: a file put in the cache by hand) loads with no network."""
    import torchvision
    folder, attempts = offline_hub
    net = torchvision.models.resnet18(weights=None)
    folder.mkdir(parents=True)
    for weights in (torchvision.models.ResNet18_Weights.DEFAULT, torchvision.models.ResNet18_Weights.IMAGENET1K_V1):
        torch.save(net.state_dict(), folder / weights.url.rsplit("/", 1)[1])
    for name in ("imagenet", "IMAGENET1K_V1"):
        model = STA(backbone_weights=name, **TOY)
        torch.testing.assert_close(model.backbone.body[0].weight, net.conv1.weight)
        assert model.backbone.pretrained
    assert attempts == []
