"""Registries build what they list: the losses (stafast.losses.LOSSES: every entry builds its own
Criterion, whose forward returns named, weighted terms read from the STAOutput fields its losses
declare) and the frame pipelines (stafast.data.loader.LOADERS)."""
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import sys

from stafast import losses
from stafast.config import TrainConfig
from stafast.data import ClipPlan, Tracklet, build_loader, loader
from stafast.losses import LOSSES, Criterion, OIMLoss, SoftmaxLoss, build_criterion


class Doubled(nn.Module):
    takes = "feature"

    def forward(self, inputs, targets):
        return 2 * inputs.sum() + 0 * targets.sum()


def output(b=4, d=8):
    return SimpleNamespace(embedding=torch.randn(b, d), feature=torch.randn(b, d))


@pytest.mark.parametrize("name, cls, field", [("oim", OIMLoss, "embedding"), ("softmax", SoftmaxLoss, "feature")])
def test_each_entry_builds_its_loss_on_its_field(name, cls, field):
    criterion = build_criterion(TrainConfig.create("synthetic", loss=name, embed_dim=8), 5)
    assert criterion.terms == ("id",) and criterion.takes == (field,)
    assert type(criterion.losses["id"]) is cls
    terms = criterion(output(), torch.tensor([0, 1, 2, 0]))
    assert list(terms) == ["id"] and terms["id"].dim() == 0 and terms["id"] > 0


def test_a_new_entry_builds_what_it_lists_and_shows_in_the_config(monkeypatch):
    listed = re.escape(str(tuple(LOSSES)))  # before the new entry
    monkeypatch.setitem(LOSSES, "doubled", lambda cfg, n: Criterion({"a": Doubled(), "b": Doubled()}, {"b": 0.5}))
    with pytest.raises(ValueError, match=rf"TrainConfig: loss must be one of {listed}"):
        TrainConfig.create("synthetic", loss="doubled")  # the choices were read when config was imported
    cfg = SimpleNamespace(loss="doubled")
    criterion = build_criterion(cfg, 5)
    out = output()
    terms = criterion(out, torch.zeros(4, dtype=torch.long))
    assert list(terms) == ["a", "b"]
    torch.testing.assert_close(terms["a"], 2 * out.feature.sum())
    torch.testing.assert_close(terms["b"], out.feature.sum())
    monkeypatch.setitem(LOSSES, "plain", lambda cfg, n: Doubled())
    with pytest.raises(TypeError, match=r"LOSSES\['plain'\] built a Doubled, expected a stafast.losses.Criterion"):
        build_criterion(SimpleNamespace(loss="plain"), 5)


def test_bad_criteria_are_refused():
    with pytest.raises(ValueError, match=r"the term name 'loss' is reserved"):
        Criterion({"loss": Doubled()})
    with pytest.raises(ValueError, match=r"term 'x': Linear declares no `takes`"):
        Criterion({"x": nn.Linear(2, 2)})
    with pytest.raises(ValueError, match=r"a weight for 'c', which is not one of its terms"):
        Criterion({"a": Doubled()}, {"c": 2.0})
    with pytest.raises(ValueError, match="needs at least one term"):
        Criterion({})


def test_every_exported_loss_is_wired_into_an_entry():
    built = {type(m) for name in LOSSES for m in build_criterion(TrainConfig.create("synthetic", loss=name), 5).modules()}
    exported = [getattr(losses, n) for n in losses.__all__]
    loss_classes = {c for c in exported if isinstance(c, type) and issubclass(c, nn.Module) and c is not Criterion}
    assert loss_classes and loss_classes <= built, loss_classes - built


def test_each_pipeline_name_builds_its_own_loader(monkeypatch):
    assert loader.PIPELINES == ("auto", *loader.LOADERS)
    plan = ClipPlan([Tracklet(("f0.jpg", "f1.jpg"), 0, 0)], 2, "test")
    monkeypatch.setitem(loader.LOADERS, "fake", lambda *args: ("fake", args[1:4]))
    assert build_loader(plan, 1, 32, 16, pipeline="fake") == ("fake", (1, 32, 16))
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # no DALI: auto takes the torch path
    assert type(build_loader(plan, 1, 32, 16, pipeline="auto", workers=0)).__name__ == "TorchClipLoader"
    with pytest.raises(ValueError, match=r"pipeline must be one of \('auto', 'dali', 'torch', 'fake'\), got 'x'"):
        build_loader(plan, 1, 32, 16, pipeline="x")
