"""The teacher cache: written and read back exactly, the same loss as the live teacher at K = V, manifest
checks against the run, and interrupted builds that resume without ever reading as complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from kinherit.commands.pretrain import pretrain
from kinherit.core.errors import KinheritError
from kinherit.data import BlockCollator, build_blocks, load_corpus
from kinherit.inheritance.teachers import TeacherSet
from kinherit.inheritance.topk import TopKTarget, check_cached_k
from kinherit.models.lm import target_labels
from kinherit.models.loading import load_model
from kinherit.training.load_teachers import load_teacher
from kinherit.training.options import (
    CacheArguments,
    DataArguments,
    InheritanceArguments,
    KinheritTrainingArguments,
    ModelArguments,
    PartArguments,
)
from kinherit.training.teacher_cache import TeacherCache, build_cache
from kinherit.training.trainer import InheritanceTrainer


def data_args(tokenizer_dir, tmp, block_size=32) -> DataArguments:
    return DataArguments(tokenizer=str(tokenizer_dir), block_size=block_size, max_documents=3,
                         validation_fraction=0.34, cache_dir=str(tmp / "blocks"))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tokenizer):
    """An untrained causal and masked teacher (exactness needs no skill), saved with the tokenizer."""
    root = tmp_path_factory.mktemp("cache-teachers")
    for name in ("llama-1x64", "roberta-1x64"):
        torch.manual_seed(0)
        load_model(name, tokenizer, 32).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def build(tmp, tokenizer_dir, teacher, top_k, parts=None, name=None, **options):
    cache = CacheArguments(output=str(tmp / (name or f"cache-{top_k}")), top_k=top_k, batch_size=7,
                           blocks_per_shard=options.get("blocks_per_shard", 50),
                           **{k: v for k, v in options.items()
                              if k in ("epochs", "seed", "log_prob_dtype", "compression")})
    inherit = InheritanceArguments(teacher=[str(teacher)], temperature=options.get("temperature", 1.0),
                                   inherit_schedule="constant")
    return build_cache(data_args(tokenizer_dir, tmp), inherit, cache, parts=parts), cache.output


def live_blocks(tmp, tokenizer, tokenizer_dir):
    data = data_args(tokenizer_dir, tmp)
    corpus = load_corpus(data.corpus_specs())
    return build_blocks(corpus.train, tokenizer, 32, corpus.domains, corpus.fingerprint, "train", data.cache_dir)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_cache_reads_back_the_live_top_k_exactly(tmp_path, tokenizer, tokenizer_dir, teachers, compression):
    manifest, path = build(tmp_path, tokenizer_dir, teachers / "llama-1x64", 8, log_prob_dtype="float32",
                           compression=compression)
    blocks = live_blocks(tmp_path, tokenizer, tokenizer_dir)
    assert manifest["settings"]["blocks"] == len(blocks) and manifest["positions"] == len(blocks) * 31
    cache = TeacherCache(path)
    teacher = TeacherSet([load_teacher(str(teachers / "llama-1x64"), tokenizer, "causal")[0]])
    chosen = [3, 77, 51, len(blocks) - 1]  # across shards of 50 blocks, in any order
    batch = BlockCollator(tokenizer, masked=False)([blocks[i] for i in chosen])
    labels = target_labels(batch["labels"], "causal")
    positions = (labels != -100).nonzero().squeeze(-1)
    hidden, rows = teacher.hidden_states(batch["input_ids"], None, None)
    live = TopKTarget.from_log_probs(teacher.target(positions, hidden, rows, 1.0, len(tokenizer)).log_probs, 8)
    cached = cache.target(batch["block_index"], 0, torch.full((4,), 31), torch.device("cpu"), cache.held)
    assert torch.equal(cached.ids, live.ids)
    torch.testing.assert_close(cached.log_probs, live.log_probs, rtol=1e-5, atol=1e-5)
    plain = 8 * (2 + 4)  # uint16 ids, float32 values
    assert manifest["settings"]["compression"] == compression
    if compression == "none":
        assert manifest["bytes_per_position"] == pytest.approx(plain, rel=0.05)
    else:  # an untrained teacher's near-uniform rows compress little, but they do
        assert manifest["bytes_per_position"] < plain
    # a run's --top_k reads only the first K tokens of each position: the same values as cutting the whole rows
    three = cache.target(batch["block_index"], 0, torch.full((4,), 31), torch.device("cpu"), 3)
    assert three.ids.shape == (4 * 31, 3) and torch.equal(three.ids, cached.ids[:, :3])
    assert torch.equal(three.log_probs, cached.log_probs[:, :3])
    with pytest.raises(KinheritError, match="--top_k 9 asks for more tokens than the teacher cache holds"):
        check_cached_k(9, cache.held)


def test_a_cache_built_with_k_above_the_vocabulary_holds_and_serves_v_tokens(tmp_path, tokenizer, tokenizer_dir,
                                                                             teachers):
    vocab = len(tokenizer)
    _manifest, path = build(tmp_path, tokenizer_dir, teachers / "llama-1x64", vocab + 5)
    blocks = live_blocks(tmp_path, tokenizer, tokenizer_dir)
    batch = BlockCollator(tokenizer, masked=False)([blocks[0], blocks[1]])
    cache = TeacherCache(path)
    cached = cache.target(batch["block_index"], 0, torch.full((2,), 31), torch.device("cpu"), cache.held)
    assert cached.ids.shape == (2 * 31, vocab)
    with pytest.raises(KinheritError, match=f"--top_k {vocab + 1} asks for more tokens than the teacher cache holds"):
        check_cached_k(vocab + 1, cache.held)


@pytest.mark.parametrize("kind", ["llama-1x64", "roberta-1x64"])
def test_loss_from_a_full_cache_equals_the_live_loss(tmp_path, tokenizer, tokenizer_dir, teachers, kind):
    """K = V and float32 values: the cached KI step gives the live step's loss and gradients."""
    _manifest, path = build(tmp_path, tokenizer_dir, teachers / kind, len(tokenizer), log_prob_dtype="float32",
                            temperature=2.0)
    masked = kind.startswith("roberta")
    blocks = live_blocks(tmp_path, tokenizer, tokenizer_dir)
    batch = BlockCollator(tokenizer, masked=masked)([blocks[i] for i in (5, 60, 9)])
    results = []
    for source in ("live", "cache"):
        torch.manual_seed(1)
        student = load_model(kind.replace("1x64", "2x64"), tokenizer, 32)
        student.train()
        args = TrainingArguments(str(tmp_path / source), report_to="none", use_cpu=True)
        inherit = InheritanceArguments(temperature=2.0, inherit_schedule="constant", inherit_value=0.7)
        live = TeacherSet([load_teacher(str(teachers / kind), tokenizer, "masked" if masked else "causal")[0]])
        trainer = InheritanceTrainer(model=student, args=args, inherit_args=inherit, vocab_size=len(tokenizer),
                                     teachers=live if source == "live" else None,
                                     teacher_cache=TeacherCache(path) if source == "cache" else None)
        torch.manual_seed(2)  # the same dropout masks in both steps
        loss = trainer.compute_loss(student, dict(batch))
        loss.backward()
        assert trainer.stats.taught > 0  # the KI term was taken
        results.append((loss.detach(), [p.grad.clone() for p in student.parameters()]))
    (live_loss, live_grads), (cached_loss, cached_grads) = results
    assert cached_loss.item() == pytest.approx(live_loss.item(), rel=1e-5)
    for a, b in zip(live_grads, cached_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_manifest_mismatches_are_errors(tmp_path, tokenizer, tokenizer_dir, teachers):
    _manifest, path = build(tmp_path, tokenizer_dir, teachers / "roberta-1x64", 8, seed=5)
    cache = TeacherCache(path)
    run = dict(cache.settings)
    for key, value in (("temperature", 2.0), ("block_size", 64), ("tokenizer", "other"), ("seed", 6)):
        with pytest.raises(KinheritError, match=f"does not match this run .*{key}: cache"):
            cache.check_run({**run, key: value}, epochs_needed=1)
    with pytest.raises(KinheritError, match="inherits over 2 epochs of masks but the cache .* holds 1"):
        cache.check_run(run, epochs_needed=2)


def test_interrupted_build_resumes_and_never_reads_as_complete(tmp_path, tokenizer_dir, teachers, monkeypatch):
    from kinherit.training import teacher_cache

    real = teacher_cache._cache_blocks
    calls = []

    def dies_after_two_shards(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_cache, "_cache_blocks", dies_after_two_shards)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, tokenizer_dir, teachers / "llama-1x64", 4)
    output = tmp_path / "cache-4"
    assert not output.exists() and len(list((tmp_path / "cache-4.partial").glob("*.safetensors"))) == 2
    with pytest.raises(KinheritError, match="is incomplete .*re-run the same"):
        TeacherCache(output)
    monkeypatch.setattr(teacher_cache, "_cache_blocks", real)
    resumed = []
    monkeypatch.setattr(teacher_cache, "_cache_blocks", lambda *a, **k: resumed.append(a[1]) or real(*a, **k))
    manifest, _path = build(tmp_path, tokenizer_dir, teachers / "llama-1x64", 4)
    assert calls[0] not in resumed and calls[1] not in resumed  # the two finished shards were kept
    assert not (tmp_path / "cache-4.partial").exists()
    TeacherCache(output)  # sealed and verified
    with pytest.raises(KinheritError, match="never overwritten"):
        build(tmp_path, tokenizer_dir, teachers / "llama-1x64", 4)
    shard = next(output.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(KinheritError, match="truncated"):
        TeacherCache(output)
    assert manifest["settings"]["epochs"] == 1


def test_a_cache_built_in_parts_equals_one_built_at_once(tmp_path, tokenizer_dir, teachers):
    """Parts (processes or machines sharing the folder) each build every third shard of every epoch's masks, in
    any order; the last to finish seals a cache whose shards are the single build's, byte for byte."""
    teacher, epochs = "roberta-1x64", 2
    options = {"blocks_per_shard": 2, "epochs": epochs, "seed": 0}
    whole, whole_path = build(tmp_path, tokenizer_dir, teachers / teacher, 4, name="whole", **options)
    built = [build(tmp_path, tokenizer_dir, teachers / teacher, 4, PartArguments(parts=3, part=part), name="parts",
                   **options)[0] for part in (1, 2, 0)]
    assert built[0] is None and built[1] is None and built[2]["parts"] == 3
    shards = sorted(p.name for p in Path(whole_path).glob("*.safetensors"))
    assert len(shards) >= 3 * epochs
    assert shards == sorted(p.name for p in (tmp_path / "parts").glob("*.safetensors"))
    for name in shards:
        assert (tmp_path / "parts" / name).read_bytes() == (Path(whole_path) / name).read_bytes()
    assert built[2]["positions"] == whole["positions"] and built[2]["settings"] == whole["settings"]


def test_a_corrupt_shard_is_found_when_first_read(tmp_path, tokenizer, tokenizer_dir, teachers):
    """Opening a cache checks sizes only (a large cache is not read whole at every start); a shard whose bytes
    changed is refused, naming it, when a batch first reads it."""
    _manifest, path = build(tmp_path, tokenizer_dir, teachers / "llama-1x64", 4, blocks_per_shard=2)
    shard = Path(path) / "epoch0-shard00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    cache = TeacherCache(path)
    counts = torch.tensor([31])
    cache.target(torch.tensor([0]), 0, counts, torch.device("cpu"), 4)  # shard 0 is intact
    with pytest.raises(KinheritError, match=r"epoch0-shard00001.safetensors is corrupt"):
        cache.target(torch.tensor([2]), 0, counts, torch.device("cpu"), 4)


def test_build_stopped_before_sealing_resumes(tmp_path, tokenizer_dir, teachers, monkeypatch):
    from kinherit.training import teacher_cache

    real = teacher_cache.seal

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher_cache, "seal", killed)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, tokenizer_dir, teachers / "llama-1x64", 4)
    monkeypatch.setattr(teacher_cache, "seal", real)
    manifest, path = build(tmp_path, tokenizer_dir, teachers / "llama-1x64", 4)
    TeacherCache(path)  # sealed and verified
    assert manifest["positions"] > 0 and not (tmp_path / "cache-4.partial").exists()


def test_pretrain_reads_the_cache(tmp_path, tokenizer, tokenizer_dir, teachers):
    _manifest, path = build(tmp_path, tokenizer_dir, teachers / "roberta-1x64", 16, seed=0, epochs=1)
    args = KinheritTrainingArguments(output_dir=str(tmp_path / "student"), max_steps=6, eval_steps=6,
                                     logging_steps=3, save_strategy="no", report_to="none", disable_tqdm=True,
                                     use_cpu=True, per_device_train_batch_size=8, seed=0)
    inherit = InheritanceArguments(teacher_cache=path, inherit_steps=6, temperature=1.0)
    summary = pretrain(ModelArguments(model="roberta-2x64"), data_args(tokenizer_dir, tmp_path), inherit, args)
    log = [json.loads(line) for line in (tmp_path / "student" / "log.jsonl").read_text().splitlines()]
    assert any("inherit/ki_loss" in r for r in log) and summary["teacher_val_losses"][0] > 0
    args.seed = 1  # other masks than the cached ones
    args.output_dir = str(tmp_path / "student-seed1")
    with pytest.raises(KinheritError, match="seed: cache 0, run 1"):
        pretrain(ModelArguments(model="roberta-2x64"), data_args(tokenizer_dir, tmp_path), inherit, args)
