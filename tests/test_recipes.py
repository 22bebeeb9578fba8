"""--optimizer adam, --warmup-epochs, --recipe presets and their precedence, --diversity-form, and
every loss term on record."""
import json

import pytest
import torch

from stafast import train as T

from stafast.config import RECIPES, SYNTHETIC, SYNTHETIC_RECIPES, TrainConfig
from stafast.losses import diversity_term
from stafast.optim import build_optimizer, build_schedule

from .test_train import run, tiny_root  # noqa: F401  (the tiny synthetic set, a module fixture)


def lrs(cfg, epochs):
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = build_optimizer(cfg, params)
    schedule = build_schedule(cfg, optimizer, epochs)
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return optimizer, schedule, out


def test_adam_and_a_linear_warmup_before_the_step():
    cfg = TrainConfig.create("mars", optimizer="adam", lr=3.5e-4, warmup_epochs=10, lr_step=1 / 3, stages=(4,),
                             epochs=(120,))
    optimizer, schedule, got = lrs(cfg, 120)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["weight_decay"] == 5e-4
    want = [3.5e-4 * (0.1 + 0.9 * e / 10) if e < 10 else 3.5e-4 if e < 40 else 3.5e-5 for e in range(120)]
    assert got == pytest.approx(want, rel=1e-9)
    # the schedule's state round-trips (resume)
    _, again, _ = lrs(cfg, 3)
    again.load_state_dict(schedule.state_dict())
    assert again.state_dict() == schedule.state_dict()
    # no warmup: the plain step schedule, as before
    plain = TrainConfig.create("mars", lr_step=0.5, stages=(4,), epochs=(4,))
    _, schedule, got = lrs(plain, 4)
    assert isinstance(schedule, torch.optim.lr_scheduler.MultiStepLR) and got == pytest.approx([0.1, 0.1, 0.01, 0.01])


def test_recipes_and_the_one_precedence_rule():
    strong = TrainConfig.create("mars", recipe="strong")
    for field, value in RECIPES["strong"].items():
        assert getattr(strong, field) == value, field
    assert strong.arch == "resnet50" and strong.recipe == "strong"
    assert TrainConfig.create("mars") == TrainConfig.create("mars", recipe="paper") == TrainConfig(dataset="mars")
    # explicit flag > recipe (synthetic variant) > --dataset synthetic's preset > default
    synthetic = TrainConfig.create("synthetic", recipe="strong", lr=1e-3)
    assert synthetic.lr == 1e-3                                         # the flag
    assert synthetic.epochs == SYNTHETIC_RECIPES["strong"]["epochs"]    # the recipe's synthetic variant
    assert synthetic.optimizer == "adam" and synthetic.loss == "softmax+triplet"  # the recipe over SYNTHETIC's
    assert synthetic.arch == SYNTHETIC["arch"]                          # --dataset synthetic's, the recipe is silent
    assert synthetic.momentum == 0.9                                    # the default
    with pytest.raises(ValueError, match="recipe must be one of"):
        TrainConfig.create("mars", recipe="bot")


def test_the_authors_diversity_form():
    mean = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert diversity_term(mean, 48) is mean
    authors = diversity_term(mean, 48, "authors")
    assert authors.item() == pytest.approx((0.7 * 48 + 1e-5) ** 0.5)
    authors.backward()
    assert mean.grad.item() == pytest.approx(48 / (2 * (0.7 * 48 + 1e-5) ** 0.5))
    zero = torch.zeros((), requires_grad=True)
    diversity_term(zero, 48, "authors").backward()
    assert torch.isfinite(zero.grad)  # finite at Q = 0 (the 1e-5)
    with pytest.raises(ValueError, match="diversity form must be one of"):
        diversity_term(mean, 48, "sum")


@pytest.mark.parametrize("command", [["--loss", "softmax+triplet"], ["--recipe", "strong"]],
                         ids=["softmax+triplet", "recipe strong"])  # the two commands of issue 24's acceptance
def test_every_term_is_in_the_progress_bar_tensorboard_and_metrics(tiny_root, tmp_path, monkeypatch, command):
    postfixes, tags = [], set()
    from tqdm import tqdm  # the bar stafast.progress makes, a tqdm (or its log-line subclass)
    monkeypatch.setattr(tqdm, "set_postfix",
                        lambda self, ordered_dict=None, **kw: postfixes.append({**(ordered_dict or {}), **kw}))
    from torch.utils.tensorboard import SummaryWriter
    monkeypatch.setattr(SummaryWriter, "add_scalar", lambda self, tag, *a, **kw: tags.add(tag))
    run(tiny_root, tmp_path, "--epochs", "1", "--no-eval", *command, "--log-every", "1", "--progress")
    assert postfixes and {"loss", "id", "triplet", "diversity", "lr", "clips_s"} <= set(postfixes[-1])
    assert {"loss/total", "loss/id", "loss/triplet", "loss/diversity"} <= tags
    history = json.load(open(tmp_path / "metrics.json"))["history"]
    for record in history:
        assert record["train_loss"] == pytest.approx(record["train_id"] + record["train_triplet"] +
                                                     record["train_diversity"])
        assert record["train_triplet"] > 0
