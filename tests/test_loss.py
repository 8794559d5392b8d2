"""InheritanceLoss against an independent float64 reference: values and gradients."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from kinherit.core.errors import KinheritError
from kinherit.inheritance import InheritanceLoss
from kinherit.inheritance import loss as loss_module
from kinherit.inheritance.chunking import ChunkBuffers
from kinherit.inheritance.kernels.rowwise import paired_logsumexp
from kinherit.models.lm import chunk_positions

V = 23


def reference(student, teachers, weights, labels, alpha, tau, divergence, beta=0.5):
    """Plain float64 formulas, written from the definitions, over the valid positions only."""
    s = student.double().reshape(-1, V)
    valid = labels.reshape(-1) != -100
    s = s[valid]
    y = labels.reshape(-1)[valid]
    if s.shape[0] == 0:
        return None
    ce = -torch.log_softmax(s, -1)[torch.arange(len(y)), y].mean()
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    p = sum(wi * torch.softmax(t.double().reshape(-1, V)[valid] / tau, -1) for wi, t in zip(w, teachers, strict=False))
    q = torch.softmax(s / tau, -1)
    if divergence == "forward_kl":
        d = (p * (p.log() - q.log())).sum(-1)
    elif divergence == "reverse_kl":
        d = (q * (q.log() - p.log())).sum(-1)
    elif divergence == "jsd":
        m = beta * p + (1 - beta) * q
        d = beta * (p * (p.log() - m.log())).sum(-1) + (1 - beta) * (q * (q.log() - m.log())).sum(-1)
    else:
        d = 0.5 * (p - q).abs().sum(-1)
    ki = tau**2 * d.mean()
    return (1 - alpha) * ce + alpha * ki, ce, ki


def make(seed, shape=(3, 7), n_teachers=1, ignore=True):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(*shape, V, generator=g) * 2).requires_grad_()
    teachers = [torch.randn(*shape, V, generator=g) * 2 for _ in range(n_teachers)]
    labels = torch.randint(0, V, shape, generator=g)
    if ignore:
        labels[0, :4] = -100
        labels[-1, -1] = -100
    return student, teachers, labels


# The four ways of computing the gradient: autograd, the closed form in eager passes, and the closed form fused by
# torch.compile or by the native CPU kernels.
PATHS = {"autograd": {"kernels": "autograd"}, "fused": {"kernels": "eager"}, "compiled": {"kernels": "compiled"},
         "native": {"kernels": "native"}}


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 3.0])
def test_paired_logsumexp_matches_float64_at_every_temperature(tau):
    """The plain and tempered logsumexps (one squared from the other's exponentials at tau = 2 and 1/2) equal
    float64 ones, also for rows whose spread makes the squared exponentials underflow."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, 300, generator=g) * 3
    z[0] *= 40  # a spread of hundreds of nats: exp((z - m) / 2)^2 underflows where exp(z - m) does
    z[1] = 7.0  # a flat row
    kept = z.clone()
    lse, tempered_lse = paired_logsumexp(z, z.max(-1, keepdim=True).values, tau)
    zd = z.double()
    assert torch.allclose(lse.squeeze(-1).double(), torch.logsumexp(zd, -1), rtol=1e-6)
    assert torch.allclose(tempered_lse.squeeze(-1).double(), torch.logsumexp(zd / tau, -1), rtol=1e-6)
    assert torch.equal(z, kept)  # read only


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "tvd"])
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("path", list(PATHS))
def test_values_and_gradients_match_float64_reference(divergence, tau, path):
    student, teachers, labels = make(hash((divergence, tau)) % 1000)
    loss = InheritanceLoss(temperature=tau, divergence=divergence, beta=0.3 if divergence == "jsd" else 0.5,
                           chunk_size=5, **PATHS[path])
    parts = loss(student, teachers[0], labels, alpha=0.7)
    parts.total.backward()
    ref_student = student.detach().double().requires_grad_()
    total, ce, ki = reference(ref_student, teachers, [1.0], labels, 0.7, tau, divergence,
                              beta=0.3 if divergence == "jsd" else 0.5)
    total.backward()
    assert parts.total.item() == pytest.approx(total.item(), rel=1e-5, abs=1e-6)
    assert parts.self_loss.item() == pytest.approx(ce.item(), rel=1e-5)
    assert parts.ki_loss.item() == pytest.approx(ki.item(), rel=1e-4, abs=1e-6)
    assert torch.allclose(student.grad.double(), ref_student.grad, atol=1e-6, rtol=1e-4)
    assert parts.num_positions == int((labels != -100).sum())


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("ki_weight, alpha", [(0.25, 0.7), (4.0, 0.3), (0.0, 1.0), (2.0, 1.0)])
def test_the_ki_weight_matches_float64_reference(path, ki_weight, alpha):
    """(1 - alpha) CE + alpha w tau^2 KL, computed as a rescaled loss at another alpha, equals the plain formula."""
    student, teachers, labels = make(17)
    parts = InheritanceLoss(temperature=1.5, chunk_size=5, ki_weight=ki_weight, **PATHS[path])(
        student, teachers[0], labels, alpha=alpha)
    parts.total.backward()
    ref_student = student.detach().double().requires_grad_()
    _total, ce, ki = reference(ref_student, teachers, [1.0], labels, alpha, 1.5, "forward_kl")
    total = (1 - alpha) * ce + alpha * ki_weight * ki
    total.backward()
    assert parts.total.item() == pytest.approx(total.item(), rel=1e-5, abs=1e-7)
    assert parts.self_loss.item() == pytest.approx(ce.item(), rel=1e-5)  # the parts are reported unweighted
    assert parts.ki_loss.item() == pytest.approx(ki.item(), rel=1e-4)
    assert torch.allclose(student.grad.double(), ref_student.grad, atol=1e-6, rtol=1e-4)


def test_a_negative_ki_weight_is_refused():
    with pytest.raises(KinheritError, match="--ki_weight must be a finite number >= 0"):
        InheritanceLoss(ki_weight=-1.0)


@pytest.mark.parametrize("path", list(PATHS))
def test_three_weighted_teachers(path):
    student, teachers, labels = make(5, n_teachers=3)
    weights = [0.5, 0.3, 0.2]
    parts = InheritanceLoss(temperature=2.0, chunk_size=4, **PATHS[path])(student, teachers, labels, alpha=0.4,
                                                                         teacher_weights=[5, 3, 2])
    parts.total.backward()
    ref_student = student.detach().double().requires_grad_()
    total, _, ki = reference(ref_student, teachers, weights, labels, 0.4, 2.0, "forward_kl")
    total.backward()
    assert parts.total.item() == pytest.approx(total.item(), rel=1e-5)
    assert parts.ki_loss.item() == pytest.approx(ki.item(), rel=1e-5)
    assert torch.allclose(student.grad.double(), ref_student.grad, atol=1e-6, rtol=1e-4)


def test_chunked_equals_unchunked():
    student, teachers, labels = make(11, shape=(4, 16))
    grads, values = [], []
    for chunk in (1, 7, 10_000):
        s = student.detach().clone().requires_grad_()
        parts = InheritanceLoss(temperature=1.5, chunk_size=chunk)(s, teachers[0], labels, alpha=0.5)
        parts.total.backward()
        values.append(parts.total.item())
        grads.append(s.grad)
    assert values[0] == pytest.approx(values[1], rel=1e-6) and values[1] == pytest.approx(values[2], rel=1e-6)
    assert torch.allclose(grads[0], grads[2], atol=1e-7) and torch.allclose(grads[1], grads[2], atol=1e-7)


def test_the_default_chunk_bounds_its_tensors_by_bytes(monkeypatch):
    # one float32 [positions, V] tensor within 256 MB and 1024 positions, shared by a chunk's tensors (two with a
    # teacher: the same bytes), at least 64 positions; an explicit size wins
    assert [chunk_positions(None, v) for v in (8192, 65536, 131072, 262144, 10**7)] == [1024, 1024, 512, 256, 64]
    assert [chunk_positions(None, v, 2) for v in (8192, 32768, 65536, 131072, 10**7)] == [512, 512, 512, 256, 64]
    assert chunk_positions(300, 131072, 2) == 300
    with pytest.raises(KinheritError, match="chunk_size must be at least 1"):
        InheritanceLoss(chunk_size=0)
    # the loss splits by the default for its vocabulary and tensors (the budget shrunk to 12 rows of V logits:
    # 12 positions without a teacher, 6 with one)
    monkeypatch.setattr("kinherit.models.lm.CHUNK_BYTES", 12 * V * 4)
    monkeypatch.setattr("kinherit.models.lm.MIN_CHUNK", 1)
    seen = []
    real = loss_module.chunked_loss
    monkeypatch.setattr(loss_module, "chunked_loss", lambda *a, **k: seen.append(a[2]) or real(*a, **k))
    student, teachers, labels = make(11, shape=(4, 16))
    InheritanceLoss(temperature=1.5)(student, teachers[0], labels, alpha=0.5)
    InheritanceLoss(temperature=1.5)(student, None, labels, alpha=0.0)
    assert seen == [6, 12]


def test_fully_ignored_batch_is_finite_zero():
    student, teachers, labels = make(2)
    labels[:] = -100
    parts = InheritanceLoss()(student, teachers[0], labels, alpha=0.5)
    parts.total.backward()
    assert parts.total.item() == 0.0 and math.isfinite(parts.self_loss.item())
    assert torch.isfinite(student.grad).all() and (student.grad == 0).all()


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
@pytest.mark.parametrize("teacher", [True, False], ids=["ki", "self-learning"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_label_smoothing_matches_float64_reference(path, divergence, teacher, eps):
    """CE with a smoothed target (1 - eps) onehot + eps / V (eps = 0: plain CE), written out in float64, on every
    gradient path."""
    student, teachers, labels = make(11)
    alpha, tau = 0.6, 2.0
    loss = InheritanceLoss(temperature=tau, divergence=divergence, chunk_size=5, label_smoothing=eps, **PATHS[path])
    parts = loss(student, teachers[0] if teacher else None, labels, alpha=alpha)
    parts.total.backward()
    leaf = student.detach().double().requires_grad_()
    valid = labels.reshape(-1) != -100
    logp = torch.log_softmax(leaf.reshape(-1, V)[valid], -1)
    y = labels.reshape(-1)[valid]
    ce = ((1 - eps) * -logp[torch.arange(len(y)), y] + eps * -logp.mean(-1)).mean()
    _total, _ce, ki = reference(leaf, teachers, [1.0], labels, alpha, tau, divergence)
    total = (1 - alpha) * ce + alpha * ki if teacher else ce
    total.backward()
    assert parts.self_loss.item() == pytest.approx(ce.item(), rel=1e-5)
    assert parts.total.item() == pytest.approx(total.item(), rel=1e-5)
    assert torch.allclose(student.grad.double(), leaf.grad, atol=1e-6, rtol=1e-4)
    with pytest.raises(KinheritError, match="label smoothing must be in"):
        InheritanceLoss(label_smoothing=1.0)


def test_alpha_zero_and_one_limits():
    student, teachers, labels = make(3)
    loss = InheritanceLoss(temperature=2.0)
    zero = loss(student, teachers[0], labels, alpha=0.0)
    one = loss(student, teachers[0], labels, alpha=1.0)
    assert zero.total.item() == pytest.approx(zero.self_loss.item())
    assert one.total.item() == pytest.approx(one.ki_loss.item())


@pytest.mark.parametrize("path", list(PATHS))
def test_ki_loss_is_the_divergence_whatever_alpha(path):
    """Handed teacher logits, the loss reports the mean tau^2 KL even at alpha = 0 (where it adds no gradient)."""
    student, teachers, labels = make(9)
    _total, _ce, ki = reference(student.detach().double(), teachers, [1.0], labels, 0.0, 2.0, "forward_kl")
    zero = InheritanceLoss(temperature=2.0, **PATHS[path])(student, teachers[0], labels, alpha=0.0)
    assert ki.item() > 0.01 and zero.ki_loss.item() == pytest.approx(ki.item(), rel=1e-4)
    assert zero.agreement.item() > 0


@pytest.mark.parametrize("path", list(PATHS))
def test_agreement_is_the_share_of_positions_whose_top_tokens_match(path):
    """The top-1 agreement counts positions where the teacher's most likely token is the student's (a tie for the
    student's highest logit counts), on every gradient path and for a top-K target."""
    student, teachers, labels = make(13, shape=(4, 9))
    valid = labels.reshape(-1) != -100
    z, t = student.detach().reshape(-1, V)[valid], teachers[0].reshape(-1, V)[valid]
    z[0] = z[0, 0]  # a flat row: every token ties for the student's top
    z[1, t[1].argmax()] = z[1].max() + 1.0  # agreement made certain on one row, and refused on another
    z[2, t[2].argmax()] = z[2].min() - 1.0
    leaf = student.detach().clone()
    leaf.reshape(-1, V)[valid] = z
    expected = ((z.argmax(-1) == t.argmax(-1)) | (z[torch.arange(len(z)), t.argmax(-1)] == z.amax(-1))).float().mean()
    assert 0.0 < expected.item() < 1.0
    parts = InheritanceLoss(temperature=2.0, **PATHS[path])(leaf.requires_grad_(), teachers[0], labels, alpha=0.5)
    assert parts.agreement.item() == pytest.approx(expected.item())
    if path != "autograd":
        cached = InheritanceLoss(temperature=2.0, top_k=4, **PATHS[path])(leaf, teachers[0], labels, alpha=0.5)
        assert cached.agreement.item() == pytest.approx(expected.item())


def test_bfloat16_logits_are_computed_in_float32():
    student, teachers, labels = make(4)
    exact = InheritanceLoss(temperature=2.0)(student, teachers[0], labels, alpha=0.5).total.item()
    low = InheritanceLoss(temperature=2.0)(student.detach().bfloat16(), teachers[0].bfloat16(), labels, alpha=0.5)
    assert low.total.dtype == torch.float32
    assert low.total.item() == pytest.approx(exact, rel=2e-2)


def test_padded_teacher_vocabulary_is_truncated():
    student, teachers, labels = make(6)
    padded = torch.cat([teachers[0], torch.full((*teachers[0].shape[:-1], 9), 50.0)], dim=-1)
    plain = InheritanceLoss(vocab_size=V)(student, teachers[0], labels, alpha=0.6).total
    cut = InheritanceLoss(vocab_size=V)(student, padded, labels, alpha=0.6).total
    assert cut.item() == pytest.approx(plain.item(), rel=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature must be a positive"),
    ({"temperature": -1.0}, "temperature must be a positive"),
    ({"divergence": "kl"}, "unknown divergence"),
    ({"divergence": "jsd", "beta": 1.0}, "0 < beta < 1"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(KinheritError, match=message):
        InheritanceLoss(**kwargs)


@pytest.mark.parametrize("weights, message", [([1, -1], "non-negative"), ([0, 0], "all zero"), ([1], "2 teachers")])
def test_bad_teacher_weights(weights, message):
    student, teachers, labels = make(7, n_teachers=2)
    with pytest.raises(KinheritError, match=message):
        InheritanceLoss()(student, teachers, labels, alpha=0.5, teacher_weights=weights)


def test_failed_compilation_falls_back_to_the_same_result(monkeypatch):
    from kinherit.inheritance import kernels as backends
    from kinherit.inheritance.kernels import compiled, eager

    def broken(*_args, **_kwargs):
        raise RuntimeError("no compiler")

    kernels = [compiled.CompiledKernel(eager.forward_kl_statistics),
               compiled.CompiledKernel(eager.forward_kl_gradient_)]
    monkeypatch.setattr(backends.CompiledKernels, "statistics", kernels[0])
    monkeypatch.setattr(backends.CompiledKernels, "gradient_", kernels[1])
    monkeypatch.setattr(torch, "compile", broken)
    student, teachers, labels = make(8)
    eager_total = InheritanceLoss(temperature=2.0, kernels="eager")(student, teachers[0], labels, alpha=0.3).total
    with pytest.warns(UserWarning, match="no compiler"):
        fallback = InheritanceLoss(temperature=2.0, kernels="compiled")(student, teachers[0], labels, alpha=0.3).total
    assert all(kernel.failed for kernel in kernels) and fallback.item() == eager_total.item()


@pytest.mark.parametrize("taught", [True, False])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("head_kind", ["linear", "linear-bias", "mlp"])
def test_head_gradients_through_sums_match_float64_reference(path, head_kind, taught, monkeypatch):
    # the head runs per chunk: a plain linear head adds its weight gradient into the accumulator in place,
    # any other head goes through autograd; both must give the reference's gradients, padded rows cut.
    # Five chunks (the last one short) share the logits and gradient buffers: a chunk that read another's
    # leftovers would break the match. The closed-form kernels write a linear head's gradient over its logits
    # (no gradient buffer is asked for); behind any other head they use a buffer of their own
    asked = set()
    real_get = ChunkBuffers.get
    monkeypatch.setattr(ChunkBuffers, "get", lambda self, name, *a: asked.add(name) or real_get(self, name, *a))
    g = torch.Generator().manual_seed(3)
    hidden_size, padded = 6, V + 3
    linear = torch.nn.Linear(hidden_size, padded, bias=head_kind == "linear-bias")
    head = linear if head_kind != "mlp" else torch.nn.Sequential(torch.nn.Linear(hidden_size, hidden_size),
                                                                  torch.nn.Tanh(), linear)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    hidden = torch.randn(21, hidden_size, generator=g).requires_grad_()
    labels = torch.randint(0, V, (21,), generator=g)
    labels[:3] = -100
    teacher = torch.randn(21, V, generator=g) * 2
    loss = InheritanceLoss(temperature=2.0, chunk_size=4, vocab_size=V, **PATHS[path])

    def targets(chunk):
        return loss_module.Target.from_logits([teacher[chunk]], [1.0], 2.0)

    sums = loss.sums(hidden, labels, 0.6 if taught else 0.0, targets if taught else None, head)
    sums.total.backward()
    ref_head = {n: p.detach().double().requires_grad_() for n, p in head.named_parameters()}
    ref_hidden = hidden.detach().double().requires_grad_()
    logits = torch.func.functional_call(copy.deepcopy(head).double(), ref_head, (ref_hidden,))[:, :V]
    if taught:
        total, _, _ = reference(logits, [teacher], [1.0], labels, 0.6, 2.0, "forward_kl")
    else:
        total = -torch.log_softmax(logits[3:], -1)[torch.arange(18), labels[3:]].mean()
    (total * int((labels != -100).sum())).backward()
    assert sums.total.item() == pytest.approx(total.item() * 18, rel=1e-5)
    assert torch.allclose(hidden.grad.double(), ref_hidden.grad, atol=1e-6, rtol=1e-4)
    for name, p in head.named_parameters():
        assert p.grad.dtype == p.dtype
        assert torch.allclose(p.grad.double(), ref_head[name].grad, atol=1e-6, rtol=1e-4), name
    assert (linear.weight.grad[V:] == 0).all()
    grad_buffer = path != "autograd" and head_kind == "mlp"
    assert asked == ({"logits"} if head_kind != "mlp" else set()) | ({"grad"} if grad_buffer else set())


def test_linear_head_with_bfloat16_logits_accumulates_like_autograd():
    # low-precision logits take the product in their own dtype (no float32 copy of the [positions, V]
    # gradient) and add it to the float32 accumulator, as autograd's path does
    g = torch.Generator().manual_seed(4)
    head = torch.nn.Linear(8, V, bias=False).to(torch.bfloat16)
    hidden = torch.randn(12, 8, generator=g).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, V, (12,), generator=g)
    grads = []
    for plain in (False, True):
        head.zero_grad(set_to_none=True)
        h = hidden.detach().clone().requires_grad_()
        module = torch.nn.Sequential(head) if plain else head  # a Sequential is not a plain Linear: autograd
        InheritanceLoss(chunk_size=5).sums(h, labels, 0.0, None, module).total.backward()
        grads.append((head.weight.grad.float(), h.grad.float()))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-2, rtol=1e-2)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-2, rtol=1e-2)


def test_chunk_buffers_hand_out_one_tensor_per_name_and_remake_it_when_too_small():
    buffers = ChunkBuffers()
    first = buffers.get("logits", 4, 5, torch.float32, torch.device("cpu"))
    shorter = buffers.get("logits", 3, 5, torch.float32, torch.device("cpu"))
    assert shorter.shape == (3, 5) and shorter.data_ptr() == first.data_ptr()
    assert buffers.get("grad", 3, 5, torch.float32, torch.device("cpu")).data_ptr() != first.data_ptr()
    longer = buffers.get("logits", 6, 5, torch.float32, torch.device("cpu"))
    assert longer.shape == (6, 5)
    assert buffers.get("logits", 6, 5, torch.bfloat16, torch.device("cpu")).dtype == torch.bfloat16


def test_teacher_logits_of_successive_chunks_share_a_buffer_and_are_exact(tokenizer):
    # a plain linear teacher head writes each chunk's logits into one reused buffer; the targets must be
    # exactly those of the head applied to that chunk, whatever the previous chunk left there
    from kinherit.inheritance.teachers import TeacherSet, freeze
    from kinherit.models.loading import load_model

    torch.manual_seed(0)
    teacher = freeze(load_model("llama-1x64", tokenizer, 16))
    ids = torch.randint(5, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(1))
    labels = ids.reshape(-1)
    with torch.no_grad():
        full = teacher(input_ids=ids).logits.reshape(-1, len(tokenizer))
    teachers = TeacherSet([teacher])
    with teachers.targets({"input_ids": ids}, labels, 1.0, len(tokenizer)) as target_of:
        first = target_of(torch.arange(0, 12))
        pointer, first_scores = first.scores.data_ptr(), first.scores.clone()
        second = target_of(torch.arange(12, 20))
        assert second.scores.data_ptr() == pointer
        assert torch.allclose(first_scores, full[:12], atol=1e-5)
        assert torch.allclose(second.scores, full[12:20], atol=1e-5)
