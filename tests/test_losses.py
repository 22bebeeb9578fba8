import pytest
import torch
import torch.nn.functional as F

from stafast.losses import OIMLoss, SoftmaxLoss
from stafast.losses.triplet import TripletLoss


def toy_problem(num_ids=5, per_id=4, dim=16):
    # Orthogonal unit centres: random ones can lie so close that no net separates them well,
    # which made "the loss went down" tests fail for some seeds.
    centers = torch.eye(dim)[:num_ids]
    targets = torch.arange(num_ids).repeat_interleave(per_id)
    return centers, targets


def test_oim_lowers_the_loss_and_keeps_rows_unit_norm():
    centers, targets = toy_problem()
    net = torch.nn.Linear(16, 16)
    crit = OIMLoss(16, 5, scalar=10, momentum=0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for _ in range(60):
        feats = F.normalize(net(centers[targets] + 0.1 * torch.randn(len(targets), 16)), dim=1)
        loss = crit(feats, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    torch.testing.assert_close(crit.lut.norm(dim=1), torch.ones(5))


def test_oim_gradient_uses_the_old_table_then_updates():
    crit = OIMLoss(4, 3, scalar=2.0, momentum=0.5)
    crit.lut.copy_(F.normalize(torch.randn(3, 4), dim=1))
    old = crit.lut.clone()
    x = F.normalize(torch.randn(2, 4), dim=1).requires_grad_()
    y = torch.tensor([1, 1])
    crit(x, y).backward()
    want_x = x.detach().clone().requires_grad_()
    F.cross_entropy(2.0 * want_x @ old.t(), y).backward()
    torch.testing.assert_close(x.grad, want_x.grad)
    torch.testing.assert_close(crit.lut[1], F.normalize(0.5 * old[1] + 0.5 * x.detach().mean(0), dim=0))
    torch.testing.assert_close(crit.lut[[0, 2]], old[[0, 2]])


def test_oim_table_update_is_a_fixed_order_sum():
    """Several samples of an id move its row once, by their mean; unlabeled ones move none. The sums are
    a GEMM (the same order on every run), not index_add_ / scatter_add_, which add atomically on CUDA in
    an order that changes from run to run."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from stafast.losses.oim import update_tables
    lut = F.normalize(torch.randn(6, 8), dim=1)
    x = F.normalize(torch.randn(7, 8), dim=1)
    y = torch.tensor([4, 1, -1, 4, 4, 0, 1])
    updated = lut.clone()
    update_tables(updated, torch.zeros(0, 8), torch.zeros((), dtype=torch.long), x, y, 0.25)
    for i in range(6):
        rows = x[y == i].double()
        want = lut[i].double() if not len(rows) else F.normalize(0.25 * lut[i].double() + 0.75 * rows.mean(0), dim=0)
        torch.testing.assert_close(updated[i].double(), want, rtol=1e-6, atol=1e-7)
    graph = make_fx(update_tables)(lut.clone(), torch.zeros(0, 8), torch.zeros((), dtype=torch.long), x, y, 0.25)
    called = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert not {t for t in called if "index_add" in t or "scatter" in t or "index_put" in t}, called
    assert any("mm" in t for t in called), called


def test_oim_queue_takes_unlabeled_samples():
    crit = OIMLoss(4, 3, queue_size=3)
    x = F.normalize(torch.randn(4, 4), dim=1).requires_grad_()
    crit(x, torch.tensor([0, -1, -1, 2])).backward()
    torch.testing.assert_close(crit.queue[:2], x.detach()[1:3])
    assert crit.queue_ptr.item() == 2
    crit(x, torch.tensor([-1, -1, 0, 1])).backward()
    torch.testing.assert_close(crit.queue[2], x.detach()[0])
    torch.testing.assert_close(crit.queue[0], x.detach()[1])


def test_oim_bad_targets():
    crit = OIMLoss(4, 3)
    with pytest.raises(ValueError, match=r"targets must be in \[0, 3\) or -1"):
        crit(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"inputs must have shape \(B, 4\)"):
        crit(torch.randn(2, 5), torch.tensor([0, 1]))


def test_softmax_and_triplet_learn():
    # Judged on one held-out batch before and after training, not on two noisy training steps;
    # margin 1 keeps the triplet loss above zero at the start.  Over 300 seeds the worst
    # after/before ratio was 0.59 (softmax) and 0.18 (triplet); OIM above: 0.013 against 0.5.
    centers, targets = toy_problem()
    for crit in (SoftmaxLoss(16, 5), TripletLoss(margin=1.0)):
        net = torch.nn.Linear(16, 16)
        opt = torch.optim.SGD(list(net.parameters()) + list(crit.parameters()), lr=0.1)
        held_out = centers[targets] + 0.1 * torch.randn(len(targets), 16)
        with torch.no_grad():
            before = crit(net(held_out), targets).item()
        for _ in range(60):
            loss = crit(net(centers[targets] + 0.1 * torch.randn(len(targets), 16)), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            after = crit(net(held_out), targets).item()
        assert before > 0 and after < 0.85 * before, (type(crit).__name__, before, after)


def test_triplet_batch_hard_value():
    x = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
    y = torch.tensor([0, 0, 1, 1])
    # hinge(pos - neg + 1.5): anchor 0: 1 - 3 -> 0; anchor 1: 1 - 2 -> 0.5; anchor 2: .5 - 2 -> 0; anchor 3: .5 - 2.5 -> 0
    assert TripletLoss(margin=1.5)(x, y).item() == pytest.approx(0.5 / 4)
    with pytest.raises(ValueError, match="at least one id with two clips"):
        TripletLoss()(x, torch.tensor([0, 1, 2, 3]))
