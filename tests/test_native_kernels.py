"""The native single-pass CPU loss kernels against float64 formulas written from the definitions."""

from __future__ import annotations

import pytest
import torch
from conftest import require_native_kernels

from kinherit.inheritance import InheritanceLoss
from kinherit.inheritance.kernels import native

BLOCK = 2048  # the kernels' block of a row: sizes around it exercise the online rescaling and the row's tail


@pytest.fixture(scope="module")
def kernels():
    return require_native_kernels()


def rows(seed, n, vocab, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=g) * spread, torch.randn(n, vocab, generator=g) * spread


def rising(n, vocab):
    """Rows whose maximum grows in every block (each block rescales the sums of the ones before)."""
    return torch.linspace(-20.0, 20.0, vocab).repeat(n, 1) + torch.randn(n, vocab) * 0.1


def assert_row_sums(sums, z):
    """Float32 sums of a row's logits (label smoothing's mean), within float32 rounding of the absolute sum."""
    assert ((sums.double() - z.sum(-1)).abs() <= 1e-6 * z.abs().sum(-1)).all()


@pytest.mark.parametrize("vocab", [23, BLOCK, BLOCK + 5, 3 * BLOCK + 17])
@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5, 0.7])
def test_forward_kl_statistics_and_gradient_match_float64(kernels, vocab, tau):
    z, t = rows(vocab, 5, vocab)
    z[1], t[2] = rising(1, vocab)[0], rising(1, vocab)[0]
    scale, alpha = 1.0 / tau, 0.3
    stats = kernels.forward_kl_statistics(z, t, scale, tau)
    zd, td = z.double(), t.double() * scale
    p = td.softmax(-1)
    torch.testing.assert_close(stats[:, 0].double(), zd.amax(-1))
    torch.testing.assert_close(stats[:, 1].double(), zd.logsumexp(-1), rtol=0, atol=2e-5)
    torch.testing.assert_close(stats[:, 2].double(), (zd / tau).logsumexp(-1), rtol=0, atol=2e-5)
    torch.testing.assert_close(stats[:, 3].double(), td.logsumexp(-1), rtol=0, atol=2e-5)
    torch.testing.assert_close(stats[:, 4].double(), (p * (td - zd / tau)).sum(-1), rtol=0, atol=5e-5)
    assert_row_sums(stats[:, 6], zd)
    grad = z.clone()
    kernels.forward_kl_gradient_(grad, t, scale, stats, alpha, tau)
    expected = (1 - alpha) * zd.softmax(-1) + alpha * tau * ((zd / tau).softmax(-1) - p)
    torch.testing.assert_close(grad.double(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("vocab", [23, BLOCK + 5, 3 * BLOCK + 17])
@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5, 0.7])
def test_row_statistics_and_softmax_mix_match_float64(kernels, vocab, tau):
    z, _ = rows(vocab, 4, vocab, spread=10.0)
    z[0] = rising(1, vocab)[0]
    stats = kernels.row_statistics(z, tau)
    zd = z.double()
    torch.testing.assert_close(stats[:, 0].double(), zd.amax(-1))
    torch.testing.assert_close(stats[:, 1].double(), zd.logsumexp(-1), rtol=0, atol=2e-5)
    torch.testing.assert_close(stats[:, 2].double(), (zd / tau).logsumexp(-1), rtol=0, atol=2e-5)
    assert_row_sums(stats[:, 3], zd)
    probs = native.softmax_(z.clone(), stats[:, 1])
    torch.testing.assert_close(probs.double(), zd.softmax(-1), rtol=1e-5, atol=1e-8)
    # a top-K gradient's pass: shift at the tempered logsumexp of the row without its first 3 tokens
    shift = (zd[:, 3:] / tau).logsumexp(-1)
    coef = torch.linspace(-0.5, 0.5, 4, dtype=torch.float64)
    mixed = native.softmax_mix_(z.clone(), stats[:, 1], shift, coef, 0.7, -0.01, tau)
    expected = 0.7 * zd.softmax(-1) + coef[:, None] * (zd / tau - shift[:, None]).exp() - 0.01
    torch.testing.assert_close(mixed.double(), expected, rtol=1e-5, atol=1e-7)


def test_row_statistics_of_masked_rows(kernels):
    # a top-K target's tail: its top tokens at -inf, in any block; with every token masked (K = V) the tail's
    # logsumexps are -inf, not NaN
    vocab = 2 * BLOCK + 9
    z, _ = rows(5, 3, vocab)
    z[0, : BLOCK + 3] = float("-inf")
    z[1, [0, 7, BLOCK + 1, vocab - 1]] = float("-inf")
    z[2] = float("-inf")
    stats = kernels.row_statistics(z, 2.0)
    torch.testing.assert_close(stats[:2, 2].double(), (z[:2].double() / 2).logsumexp(-1), rtol=0, atol=2e-5)
    assert stats[2, 1] == float("-inf") and stats[2, 2] == float("-inf")


def test_agreement_column_is_the_students_best_logit_among_the_teachers_tied_top_tokens(kernels):
    vocab = BLOCK + 40
    z, t = rows(1, 3, vocab)
    t[:, [5, BLOCK + 9]] = 50.0  # a tie for the teacher's top token, in two blocks
    z[0, BLOCK + 9] = 60.0  # row 0: the student's top token is one of the teacher's
    z[1, 7] = 60.0  # row 1: it is not
    stats = kernels.forward_kl_statistics(z, t, 1.0, 1.0)
    top = torch.maximum(z[:, 5], z[:, BLOCK + 9])
    torch.testing.assert_close(stats[:, 5], top)
    assert (stats[:, 5] >= stats[:, 0]).tolist() == [True, False, (top[2] >= z[2].max()).item()]


def test_extreme_and_masked_logits(kernels):
    # exp underflows to exactly 0 far below the maximum; a teacher that rules tokens out with -inf gives them
    # probability 0 (no NaN); a NaN logit makes its row's loss NaN rather than vanish
    vocab = BLOCK + 3
    z, t = rows(2, 3, vocab)
    z[0, 0], t[0, 1] = 90.0, -200.0
    t[1, : vocab // 2] = float("-inf")
    z[2, 11] = float("nan")
    stats = kernels.forward_kl_statistics(z, t, 0.5, 2.0)
    torch.testing.assert_close(stats[:2, 1].double(), z[:2].double().logsumexp(-1), rtol=0, atol=2e-5)
    torch.testing.assert_close(stats[1, 3].double(), (t[1].double() * 0.5).logsumexp(-1), rtol=0, atol=2e-5)
    assert torch.isfinite(stats[:2, :5]).all() and torch.isnan(stats[2, 1])
    grad = z.clone()
    kernels.forward_kl_gradient_(grad, t, 0.5, stats, 0.5, 2.0)
    assert torch.isfinite(grad[:2]).all() and (grad[1, : vocab // 2] >= 0).all()


def test_rows_with_a_stride_are_read_in_place(kernels):
    wide, wider = rows(3, 4, BLOCK + 50)
    z, t = wide[:, :BLOCK + 7], wider[:, 3:BLOCK + 10]  # row strides past the row length
    assert native.usable(z, t)
    torch.testing.assert_close(kernels.forward_kl_statistics(z, t, 0.5, 2.0),
                               kernels.forward_kl_statistics(z.contiguous(), t.contiguous(), 0.5, 2.0))


def test_only_float32_cpu_rows_are_taken(kernels):
    z = torch.randn(3, 40)
    assert native.usable(z) and not native.usable(z.bfloat16()) and not native.usable(z.t())
    with pytest.raises(RuntimeError, match="float32 CPU matrix with contiguous rows"):
        kernels.row_statistics(z.double(), 1.0)
    with pytest.raises(RuntimeError, match="one value per row"):
        kernels.softmax_mix_(z, torch.zeros(2), torch.zeros(3), torch.zeros(3), 1.0, 0.0, 1.0)


def test_the_loss_runs_them_by_default_and_can_be_told_not_to(kernels, monkeypatch):
    calls = []
    monkeypatch.setattr(native, "kernels", lambda real=native.kernels: calls.append(1) or real())
    student, teacher = rows(4, 6, 50)
    labels = torch.randint(0, 50, (6,))
    loss = InheritanceLoss(temperature=2.0)
    native_total = loss(student.requires_grad_(), teacher, labels, alpha=0.4).total
    assert calls and loss.backend("cpu").name == "native"
    calls.clear()
    compiled_total = InheritanceLoss(temperature=2.0, kernels="compiled")(student, teacher, labels, alpha=0.4).total
    assert not calls
    assert compiled_total.item() == pytest.approx(native_total.item(), rel=1e-5)


def test_a_failed_build_warns_and_leaves_the_compiled_kernels(monkeypatch):
    from torch.utils import cpp_extension

    def broken(*_args, **_kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.setattr(native, "_state", {})
    with pytest.warns(UserWarning, match="no compiler here"):
        assert native.kernels() is None
    assert not native.usable(torch.randn(2, 5))


def test_the_environments_ninja_is_found_without_activating_it(monkeypatch):
    import os
    import shutil
    import sysconfig

    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setenv("PATH", "/nowhere")
    native._ninja_on_path()
    assert os.environ["PATH"].split(os.pathsep)[0] == sysconfig.get_path("scripts")
