"""Top-K targets with a tail bucket (what a teacher cache stores) against a float64 reference."""

from __future__ import annotations

import pytest
import torch

from kinherit.core.errors import KinheritError
from kinherit.inheritance import InheritanceLoss
from kinherit.inheritance.topk import TopKTarget
from kinherit.training.options import InheritanceArguments

V = 29


def reference(student, teacher, labels, k, alpha, tau, smoothing=0.0):
    """The top-K + tail loss written from its definition in float64, differentiated by autograd."""
    s = student.double()
    p = torch.softmax(teacher.double() / tau, -1)
    ids = p.topk(k, -1).indices
    p_k = p.gather(1, ids)
    p_tail = 1 - p_k.sum(-1)
    q = torch.softmax(s / tau, -1)
    q_k = q.gather(1, ids)
    outside = torch.ones_like(q, dtype=torch.bool).scatter_(1, ids, False)
    q_tail = (q * outside).sum(-1)
    kl = (p_k * (p_k.log() - q_k.log())).sum(-1)
    if k < V:
        kl = kl + p_tail * (p_tail.log() - q_tail.log())
    ce = torch.nn.functional.cross_entropy(s, labels, reduction="sum", label_smoothing=smoothing)
    return (1 - alpha) * ce + alpha * tau**2 * kl.sum(), p_tail


def renormalized_reference(student, teacher, labels, k, alpha, tau):
    """The paper's renormalised top-K loss from its definition in float64: p^ = p_K / sum p_K against the
    student's full distribution."""
    s = student.double()
    p = torch.softmax(teacher.double() / tau, -1)
    ids = p.topk(k, -1).indices
    p_hat = p.gather(1, ids) / p.gather(1, ids).sum(-1, keepdim=True)
    log_q = torch.log_softmax(s / tau, -1).gather(1, ids)
    kl = (p_hat * (p_hat.log() - log_q)).sum()
    ce = torch.nn.functional.cross_entropy(s, labels, reduction="sum")
    return (1 - alpha) * ce + alpha * tau**2 * kl


def ours(student, teacher, labels, k, alpha, tau, kernels="eager", smoothing=0.0, mode="tail"):
    target = TopKTarget.from_log_probs(torch.log_softmax(teacher / tau, -1), k, mode)
    logits = student.detach().clone().requires_grad_()
    loss_fn = InheritanceLoss(temperature=tau, kernels=kernels, label_smoothing=smoothing)
    output, grad, loss, stats = loss_fn.chunk(logits, target, labels, alpha)
    return loss, grad, stats, target


def make(seed, rows=11):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, V, generator=g) * 2.5, torch.randn(rows, V, generator=g) * 2.5,
            torch.randint(0, V, (rows,), generator=g))


@pytest.mark.parametrize("k", [1, 4, 16, V])
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("path", ["eager", "compiled", "native"])
def test_value_and_gradient_match_float64_reference(k, tau, alpha, path):
    student, teacher, labels = make(k * 7 + int(tau * 10))
    leaf = student.double().requires_grad_()
    expected, p_tail = reference(leaf, teacher, labels, k, alpha, tau)
    expected.backward()
    loss, grad, _stats, target = ours(student, teacher, labels, k, alpha, tau, path)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)
    torch.testing.assert_close(grad.double(), leaf.grad, rtol=1e-4, atol=1e-6)
    if k < V:
        torch.testing.assert_close(target.tail_mass().double(), p_tail, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("k", [1, 4, 16, V])
@pytest.mark.parametrize("tau", [0.5, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("path", ["eager", "compiled", "native"])
def test_renormalized_mode_matches_float64_reference(k, tau, alpha, path):
    student, teacher, labels = make(k * 5 + int(tau * 10))
    leaf = student.double().requires_grad_()
    expected = renormalized_reference(leaf, teacher, labels, k, alpha, tau)
    expected.backward()
    loss, grad, _stats, _target = ours(student, teacher, labels, k, alpha, tau, path, mode="renormalize")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)
    torch.testing.assert_close(grad.double(), leaf.grad, rtol=1e-4, atol=1e-6)


def test_top_k_of_live_teachers_and_caches_are_the_same_target():
    """--top_k on live teacher logits, and a cache's first K=4 columns, give the K=4 loss of either mode."""
    student, teacher, labels = make(23)
    for mode in ("tail", "renormalize"):
        expected, expected_grad, _stats, _target = ours(student, teacher, labels, 4, 0.5, 2.0, mode=mode)
        live = InheritanceLoss(temperature=2.0, top_k=4, top_k_mode=mode)
        logits = student.clone().requires_grad_()
        parts = live(logits, teacher, labels, alpha=0.5)
        parts.total.backward()
        assert parts.total.item() * len(labels) == pytest.approx(expected.item(), rel=1e-5)
        torch.testing.assert_close(logits.grad * len(labels), expected_grad, rtol=1e-4, atol=1e-6)
        cached = TopKTarget.from_log_probs(torch.log_softmax(teacher / 2.0, -1), 4)  # the mode is the loss's
        _out, grad, loss, _stats = live.chunk(student.clone(), live.restrict(cached), labels, 0.5)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(KinheritError, match="--top_k_mode"):
        InheritanceLoss(top_k_mode="sparse")


@pytest.mark.parametrize("k", [4, V])
@pytest.mark.parametrize("path", ["eager", "compiled", "native"])
def test_label_smoothing_matches_float64_reference(k, path):
    student, teacher, labels = make(17)
    leaf = student.double().requires_grad_()
    expected, _p_tail = reference(leaf, teacher, labels, k, 0.4, 2.0, smoothing=0.1)
    expected.backward()
    loss, grad, _stats, _target = ours(student, teacher, labels, k, 0.4, 2.0, path, smoothing=0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)
    torch.testing.assert_close(grad.double(), leaf.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_k_equal_to_vocabulary_is_the_live_loss(tau):
    student, teacher, labels = make(3)
    live_student = student.clone().requires_grad_()
    live = InheritanceLoss(temperature=tau, kernels="autograd")(live_student, teacher, labels, alpha=0.6)
    live.total.backward()
    loss, grad, stats, _target = ours(student, teacher, labels, V, 0.6, tau)
    count = labels.numel()
    assert (loss / count).item() == pytest.approx(live.total.item(), rel=1e-5)
    assert (stats[1] / count).item() == pytest.approx(live.ki_loss.item(), rel=1e-5)
    assert (stats[2] / count).item() == pytest.approx(live.agreement.item())
    torch.testing.assert_close(grad / count, live_student.grad, rtol=1e-4, atol=1e-7)


def test_truncation_moves_the_loss_towards_the_live_one_as_k_grows():
    student, teacher, labels = make(5, rows=64)
    live = InheritanceLoss(temperature=1.0)(student, teacher, labels, alpha=1.0).ki_loss.item() * labels.numel()
    gaps = [abs(ours(student, teacher, labels, k, 1.0, 1.0)[2][1].item() - live) for k in (1, 4, 16, V)]
    assert gaps[-1] < 1e-3 * live and gaps == sorted(gaps, reverse=True)


def test_only_forward_kl_and_a_valid_k():
    student, teacher, labels = make(1)
    target = TopKTarget.from_log_probs(torch.log_softmax(teacher, -1), 3)
    with pytest.raises(KinheritError, match="support only --divergence forward_kl"):
        InheritanceLoss(temperature=1.0, divergence="jsd").chunk(student, target, labels, 0.5)
    with pytest.raises(KinheritError, match="support only --divergence forward_kl"):
        InheritanceArguments(teacher=["t"], top_k=10, divergence="jsd")
    with pytest.raises(KinheritError, match="top_k must be in"):
        TopKTarget.from_log_probs(torch.log_softmax(teacher, -1), V + 1)
