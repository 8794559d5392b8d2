"""Teachers with another tokenizer: alignment by character offsets on three tokenizer families, the mapped and
ULD targets against float64 references, and the identity map against the exact same-tokenizer path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from kinherit.core.errors import KinheritError
from kinherit.data.token_text import Bridge, segment_text, token_bytes, tokenizer_family
from kinherit.inheritance.cross_vocab import AlignedTarget, SortedTarget, mapped_probs, mapped_target
from kinherit.inheritance.loss import InheritanceLoss
from kinherit.inheritance.teachers import TeacherSet
from kinherit.models.loading import load_model
from kinherit.training.cross_teachers import CrossTokenizerTeachers

SAMPLES = ["The cat sat on the mat.", "Überraschung! 東京 is big.\n\nNext  doc\twith  tabs",
           "naïve café — 'quotes' and \"more\" 1234567 x=y+z;", "emoji 🙂🙃 and ÅÄÖ åäö ß", "a  b   c    d"]


def _train(model, trainer, pre, decoder, texts, normalizer=None, **extra) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoder
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **extra)


@pytest.fixture(scope="module")
def families(wiki_corpus) -> dict[str, PreTrainedTokenizerFast]:
    """A byte-level BPE, a WordPiece (lowercasing, BERT-style) and a sentencepiece-style Unigram (Metaspace), each
    trained on the same slice plus the samples."""
    texts = list(wiki_corpus.train["text"][:20]) + SAMPLES * 5
    byte_level = _train(models.BPE(), trainers.BpeTrainer(vocab_size=700, special_tokens=["</s>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
                        pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(), texts, eos_token="</s>")
    wordpiece = _train(models.WordPiece(unk_token="[UNK]"),
                       trainers.WordPieceTrainer(vocab_size=900, special_tokens=["[UNK]", "[SEP]"]),
                       pre_tokenizers.BertPreTokenizer(), decoders.WordPiece(), texts,
                       normalizer=normalizers.BertNormalizer(lowercase=True), unk_token="[UNK]", eos_token="[SEP]")
    sentencepiece = _train(models.Unigram(byte_fallback=True),
                           trainers.UnigramTrainer(vocab_size=800, special_tokens=["<unk>", "</s>"], unk_token="<unk>"),
                           pre_tokenizers.Metaspace(),
                           decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback()]), texts,
                           unk_token="<unk>", eos_token="</s>")
    return {"byte-level": byte_level, "wordpiece": wordpiece, "sentencepiece": sentencepiece}


def test_each_family_is_recognised_and_spells_its_tokens(families, tokenizer):
    assert {name: tokenizer_family(t) for name, t in families.items()} == {n: n for n in families}
    assert tokenizer_family(tokenizer) == "byte-level"
    for name in ("byte-level", "sentencepiece"):  # these spell the text back exactly
        table = token_bytes(families[name])
        for text in SAMPLES:
            ids = families[name](text, add_special_tokens=False)["input_ids"]
            spelled = b"".join(table[i] for i in ids).decode("utf-8")
            assert spelled.replace(" ", "") == text.replace(" ", ""), name  # Metaspace turns a leading space around


def test_segment_text_keeps_characters_in_step_with_bytes() -> None:
    text, ends = segment_text([b"ab", b"\xc3", b"\xa9c", b"\xe6\x9d"])  # 'é' split over two tokens; a cut character
    assert text == "ab" + "é" + "c" + "\ufffd\ufffd"
    assert ends == [2, None, 4, 6]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(SAMPLES + [" ", "\n", "-", "ü", "x" * 7, "ʼn", "世界"]), min_size=1, max_size=8),
       st.sampled_from(["byte-level", "sentencepiece"]), st.sampled_from(["byte-level", "wordpiece", "sentencepiece"]))
def test_an_aligned_pair_always_has_the_same_text_prefix(families, pieces, student_name, teacher_name) -> None:
    student, teacher = families[student_name], families[teacher_name]
    text = "".join(pieces)
    ids = student(text, add_special_tokens=False)["input_ids"]
    bridge = Bridge.build(student, teacher)
    assume(all(bridge.student_bytes[i] is not None for i in ids))  # a student that spells its text (no unknown)
    teacher_ids, pairs = bridge.align(ids)
    assert teacher_ids == teacher(segment_text([bridge.student_bytes[i] for i in ids])[0],
                                  add_special_tokens=False)["input_ids"]
    student_text, _ = segment_text([bridge.student_bytes[i] for i in ids])
    offsets = teacher(student_text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    teacher_bytes = token_bytes(teacher)
    for i, j in pairs:
        prefix = b"".join(bridge.student_bytes[t] for t in ids[:i + 1])
        end = max(e for _, e in offsets[:j + 1])
        assert prefix == student_text[:end].encode("utf-8")  # the student's tokens 0..i spell text[:end] ...
        assert all(s >= end for s, _ in offsets[j + 1:])  # ... and the teacher's 0..j cover it and no more
        if any(teacher_bytes[t] is None for t in teacher_ids[:j + 1]):
            continue  # an unknown token spells nothing; its offsets were checked above
        spelled = b"".join(teacher_bytes[t] for t in teacher_ids[:j + 1]).decode("utf-8", errors="replace")
        if teacher_name == "wordpiece":  # normalised (lowercase, no accents), spaces dropped: compare the letters
            normalised = teacher.backend_tokenizer.normalizer.normalize_str(student_text[:end])
            assert "".join(spelled.split()) == "".join(normalised.split())
        else:
            assert spelled.replace(" ", "") == student_text[:end].replace(" ", "")


def test_document_separators_align_and_the_map_is_exact_where_tokens_agree(families) -> None:
    student, teacher = families["byte-level"], families["sentencepiece"]
    bridge = Bridge.build(student, teacher)
    ids = student("one two", add_special_tokens=False)["input_ids"] + [student.eos_token_id] + \
        student("three", add_special_tokens=False)["input_ids"]
    teacher_ids, pairs = bridge.align(ids)
    separator = ids.index(student.eos_token_id)
    assert (separator, teacher_ids.index(teacher.eos_token_id)) in pairs
    assert bridge.mapping[teacher.eos_token_id] == student.eos_token_id
    student_bytes = {b: i for i, b in enumerate(bridge.student_bytes) if b}
    for index, spelled in enumerate(token_bytes(teacher)):
        if spelled in student_bytes:
            assert bridge.mapping[index] == student_bytes[spelled]
        elif spelled:  # the longest student token its text starts with
            mapped = bridge.student_bytes[bridge.mapping[index]]
            assert spelled.startswith(mapped)
            assert not any(spelled.startswith(b) and len(b) > len(mapped) for b in student_bytes)


def test_a_teacher_whose_vocabulary_maps_almost_nothing_is_refused(families) -> None:
    ascii_only = _train(models.WordPiece(unk_token="[UNK]"),
                        trainers.WordPieceTrainer(vocab_size=120, special_tokens=["[UNK]"], limit_alphabet=30),
                        pre_tokenizers.Whitespace(), decoders.WordPiece(), ["abc def ghi jkl"] * 10, unk_token="[UNK]")
    cyrillic = _train(models.BPE(), trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>"]),
                      pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(),
                      ["привет мир как дела это тест жизнь щука ёж"] * 20, eos_token="</s>")
    bridge = Bridge.build(ascii_only, cyrillic)
    with pytest.raises(KinheritError, match=r"only \d+\.\d% of its tokens map to a student token"):
        bridge.check("cyrillic-teacher")


def _reference(student_logits, teacher_logits, mapping, aligned, labels, alpha, tau, method):
    """The loss in float64 from the definitions, and its gradient by autograd."""
    z = student_logits.double().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(z, labels, reduction="none")
    p_teacher = torch.softmax(teacher_logits.double() / tau, -1)
    log_q = torch.log_softmax(z / tau, -1)
    if method == "map":
        target = torch.zeros(z.shape[0], z.shape[1], dtype=torch.float64)
        for t, s in enumerate(mapping.tolist()):
            if s >= 0:
                target[:, s] += p_teacher[:, t]
        target = target / target.sum(-1, keepdim=True)
        ki = (target * (target.clamp_min(1e-300).log() - log_q)).sum(-1)
    else:
        student_sorted = log_q.exp().sort(-1, descending=True).values
        ranks = max(student_sorted.shape[1], p_teacher.shape[1])
        pad = torch.nn.functional.pad
        teacher_sorted = pad(p_teacher.sort(-1, descending=True).values, (0, ranks - p_teacher.shape[1]))
        ki = (pad(student_sorted, (0, ranks - student_sorted.shape[1])) - teacher_sorted).abs().sum(-1)
    total = ((1 - alpha) * ce + torch.where(aligned, alpha * tau**2 * ki, 0.0)).sum()
    total.backward()
    return total.detach(), z.grad


@pytest.mark.parametrize("method", ["map", "uld"])
@pytest.mark.parametrize("path", ["eager", "native", "compiled"])
@pytest.mark.parametrize("teacher_vocab", [37, 80])
def test_the_cross_tokenizer_loss_matches_a_float64_reference(method, path, teacher_vocab) -> None:
    torch.manual_seed(0)
    rows, vocab, alpha, tau = 12, 50, 0.7, 0.5
    student, teacher = torch.randn(rows, vocab) * 3, torch.randn(rows, teacher_vocab) * 3
    mapping = torch.randint(-1, vocab, (teacher_vocab,))
    labels = torch.randint(0, vocab, (rows,))
    aligned = torch.rand(rows) > 0.3
    if method == "map":
        probs, mass = mapped_probs(teacher[aligned], mapping, vocab, tau)
        inner = mapped_target(probs)
        kept = torch.softmax(teacher[aligned].double() / tau, -1)[:, mapping >= 0].sum(-1)
        torch.testing.assert_close(mass.double(), kept, rtol=1e-5, atol=1e-6)
    else:
        inner = SortedTarget.from_logits(teacher[aligned], tau)
    loss = InheritanceLoss(temperature=tau, kernels=path)
    _, grad, total, _stats = loss.chunk(student.clone(), AlignedTarget(inner, aligned), labels, alpha)
    expected, expected_grad = _reference(student, teacher, mapping, aligned, labels, alpha, tau, method)
    torch.testing.assert_close(total.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


def test_a_teacher_through_the_identity_map_gives_the_exact_path_s_loss(tokenizer) -> None:
    """The same tokenizer through the bridge (every position aligned on ASCII text) against the exact path."""
    torch.manual_seed(0)
    teacher = load_model("llama-1x64", tokenizer, 64)
    student = load_model("llama-1x64", tokenizer, 64)
    text = " ".join(["The quick brown fox jumps over the lazy dog, and the cat sat on the mat."] * 10)
    ids = torch.tensor([tokenizer(text)["input_ids"][:64], tokenizer(text)["input_ids"][5:69]])
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1).reshape(-1)
    inputs = {"input_ids": ids}
    hidden = student.model(input_ids=ids)[0].reshape(-1, 64)
    loss = InheritanceLoss(temperature=0.5, kernels="eager")
    results = []
    bridged = CrossTokenizerTeachers([teacher], [Bridge.build(tokenizer, tokenizer, teacher.config.vocab_size)],
                                     "map")
    for source in (TeacherSet([teacher]), bridged):
        student.zero_grad()
        with loss.targets(source, inputs, labels) as targets:
            sums = loss.sums(hidden, labels, 0.6, targets, student.lm_head)
        sums.total.backward(retain_graph=True)
        results.append((sums.total.detach(), sums.ki_loss, student.lm_head.weight.grad.clone()))
    assert bridged.report()["aligned_share"] == 1.0
    assert bridged.report()["mapped_mass_share"] == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    assert results[1][1] == pytest.approx(results[0][1], rel=1e-5)
    torch.testing.assert_close(results[1][2], results[0][2], rtol=1e-4, atol=1e-6)


def test_a_tokenizer_without_offsets_is_refused() -> None:
    from types import SimpleNamespace

    with pytest.raises(KinheritError, match="is not a fast tokenizer, so it gives no character offsets"):
        tokenizer_family(SimpleNamespace(is_fast=False, name_or_path="slow-teacher"))


def test_teachers_with_different_tokenizers_mix_where_each_is_aligned_and_route_by_domain(families, tokenizer):
    torch.manual_seed(0)
    other = families["sentencepiece"]
    models_ = [load_model("llama-1x64", tokenizer, 128), load_model("llama-1x64", other, 256)]
    bridges = [Bridge.build(tokenizer, tokenizer, models_[0].config.vocab_size),
               Bridge.build(tokenizer, other, models_[1].config.vocab_size)]
    ids = torch.tensor([tokenizer(text * 6, add_special_tokens=False)["input_ids"][:40] for text in SAMPLES[:2]])
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1).reshape(-1)
    positions = torch.arange(labels.numel())
    inputs = {"input_ids": ids, "domain_id": torch.tensor([0, 1])}

    def probs(source):
        with source.targets(inputs, labels, 0.5, len(tokenizer)) as target_of:
            target = target_of(positions)
        full = torch.zeros(labels.numel(), len(tokenizer))
        full[target.aligned] = torch.softmax(target.inner.scores * target.inner.scale, -1)
        return full, target.aligned

    alone = [probs(CrossTokenizerTeachers([m], [b], "map")) for m, b in zip(models_, bridges, strict=True)]
    mixed, aligned = probs(CrossTokenizerTeachers(models_, bridges, "map", weights=[3.0, 1.0]))
    both = alone[0][1] & alone[1][1]
    assert both.any() and (alone[0][1] & ~alone[1][1]).any()  # some rows have one teacher only
    torch.testing.assert_close(mixed[both], 0.75 * alone[0][0][both] + 0.25 * alone[1][0][both])
    only_first = alone[0][1] & ~alone[1][1]
    torch.testing.assert_close(mixed[only_first], alone[0][0][only_first])
    assert torch.equal(aligned, alone[0][1] | alone[1][1])
    routed, routed_rows = probs(CrossTokenizerTeachers(models_, bridges, "map", routes={0: 0, 1: 1}))
    first, second = slice(0, 40), slice(40, 80)  # example 0 is domain 0 (teacher 0), example 1 teacher 1
    torch.testing.assert_close(routed[first], alone[0][0][first])
    torch.testing.assert_close(routed[second], alone[1][0][second])
    assert torch.equal(routed_rows[second], alone[1][1][second])
