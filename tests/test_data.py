"""Corpora, splits, tokenizer, packed blocks and masking on real built-in data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kinherit.core.errors import KinheritError
from kinherit.data import (
    BlockCollator,
    CorpusSpec,
    build_blocks,
    corpus_blocks,
    load_corpus,
    load_tokenizer,
    split_documents,
)
from kinherit.data import blocks as blocks_module
from kinherit.data.blocks import prepare_part


def test_builtin_wikipedia_is_real_text(wiki_corpus):
    assert len(wiki_corpus.train) + len(wiki_corpus.validation) == 30
    text = wiki_corpus.train[0]["text"]
    assert len(text) > 1000 and "[[" not in text  # wiki markup stripped
    assert set(wiki_corpus.train["domain"]) == {"wikipedia"}


@pytest.mark.parametrize("name", ["shakespeare", "bible", "python-code"])
def test_other_builtin_corpora_load(name):
    corpus = load_corpus([CorpusSpec(name, max_documents=12, validation_fraction=0.25)])
    assert len(corpus.train) == 9 and len(corpus.validation) == 3
    assert all(len(t) > 50 for t in corpus.train["text"])


def test_python_code_skips_site_packages_and_tests():
    from kinherit.data.builtin import python_code

    ids = [doc_id for doc_id, _ in python_code()]
    assert ids and not any("site-packages" in i or "/test/" in f"/{i}" or "idle_test" in i for i in ids)


def test_split_is_by_document_deterministic_and_disjoint():
    docs = [(f"doc{i}", f"text {i}") for i in range(200)]
    train, val = split_documents(docs, 0.1, "x")
    again_train, again_val = split_documents(list(reversed(docs)), 0.1, "x")
    assert {d for d, _ in val} == {d for d, _ in again_val}
    assert len(val) == 20 and not {d for d, _ in train} & {d for d, _ in val}
    assert {d for d, _ in train} | {d for d, _ in val} == {d for d, _ in docs}
    assert {d for d, _ in train} == {d for d, _ in again_train}


def test_training_slices_nest_split_in_halves_and_leave_validation_alone():
    docs = [(f"doc{i}", f"text {i}") for i in range(330)]
    _, validation = split_documents(docs, 0.1, "x")
    ids = {}
    for fraction, offset in [(1.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.25, 0.0), (1 / 16, 0.0)]:
        train, val = split_documents(docs, 0.1, "x", fraction, offset)
        assert val == validation  # the held-out documents never depend on the slice
        ids[fraction, offset] = {d for d, _ in train}
        assert abs(len(train) - fraction * 297) <= 1
    assert ids[1 / 16, 0.0] < ids[0.25, 0.0] < ids[0.5, 0.0] < ids[1.0, 0.0]
    assert not ids[0.5, 0.0] & ids[0.5, 0.5] and ids[0.5, 0.0] | ids[0.5, 0.5] == ids[1.0, 0.0]
    for fraction, offset in [(0.0, 0.0), (0.5, 0.75), (1.5, 0.0), (0.5, -0.1)]:
        with pytest.raises(KinheritError, match="--train_fraction"):
            split_documents(docs, 0.1, "x", fraction, offset)
    with pytest.raises(KinheritError, match="keeps no training document"):
        split_documents(docs[:20], 0.1, "x", 0.01)


def test_corpus_weights_resample_blocks_to_their_shares():
    from datasets import Dataset

    from kinherit.data.mixture import mix_blocks
    from kinherit.training.options import DataArguments

    blocks = Dataset.from_dict({"domain_id": [0] * 90 + [1] * 10, "index": list(range(100))})
    mixed = mix_blocks(blocks, [1.0, 1.0], seed=0)
    assert len(mixed) == 100 and mixed["domain_id"].count(1) == 50
    small = [i for i in mixed["index"] if i >= 90]
    assert sorted(set(small)) == list(range(90, 100)) and all(small.count(i) == 5 for i in range(90, 100))
    assert len(set(i for i in mixed["index"] if i < 90)) == 50  # the large corpus is subsampled without repeats
    assert mix_blocks(blocks, [1.0, 1.0], seed=0)["index"] == mixed["index"]
    assert mix_blocks(blocks, [1.0, 1.0], seed=1)["index"] != mixed["index"]
    assert mix_blocks(blocks, [2.0, 1.0], seed=0)["domain_id"].count(0) == 67
    data = DataArguments(corpus=["wiki=wikipedia", "code=python-code"], corpus_weights=[4, 1])
    assert data.domain_weights(["code", "wiki"]) == [1, 4]
    for weights, message in [([1.0], "one weight per --corpus"), ([1.0, 0.0], "must be positive")]:
        with pytest.raises(KinheritError, match=message):
            DataArguments(corpus=["wikipedia", "bible"], corpus_weights=weights)
    with pytest.raises(KinheritError, match="two weights"):
        DataArguments(corpus=["a=wikipedia", "a=bible"], corpus_weights=[1, 2]).domain_weights(["a"])


def test_local_files_of_every_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("plain text document " * 20)
    (tmp_path / "b.md").write_text("# markdown\n" + "words " * 30)
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": f"json doc {i} " * 10}) for i in range(3)))
    pq.write_table(pa.table({"body": [f"parquet doc {i} " * 10 for i in range(4)]}), tmp_path / "d.parquet")
    txt = load_corpus([CorpusSpec(str(tmp_path / "*.txt"), validation_fraction=0.0)])
    assert len(txt.train) == 1 and txt.train[0]["domain"] == tmp_path.name
    both = load_corpus([CorpusSpec(str(tmp_path / "*.jsonl"), text_field="body", validation_fraction=0.0),
                        CorpusSpec(str(tmp_path / "d.parquet"), text_field="body", validation_fraction=0.0,
                                   domain="pq")])
    assert len(both.train) == 7 and both.domains == [tmp_path.name, "pq"]
    assert both.train["domain"].count("pq") == 4
    folder = load_corpus([CorpusSpec(str(tmp_path), text_field="body", validation_fraction=0.0)])
    assert len(folder.train) == 1 + 1 + 3 + 4


def test_saved_dataset_folder(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"text": [f"saved document {i} " * 5 for i in range(5)]}).save_to_disk(str(tmp_path / "ds"))
    corpus = load_corpus([CorpusSpec(str(tmp_path / "ds"), validation_fraction=0.2)])
    assert len(corpus.train) == 4 and len(corpus.validation) == 1


@pytest.mark.parametrize("source, message", [
    ("no-such-corpus", "unknown corpus 'no-such-corpus'"),
    ("/nonexistent/file.txt", "does not exist"),
    ("hf:kinherit-test/absent-dataset", "could not load dataset"),
])
def test_clear_errors_for_bad_sources(source, message):
    with pytest.raises(KinheritError, match=message):
        load_corpus([CorpusSpec(source)])


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(KinheritError, match="no documents with text"):
        load_corpus([CorpusSpec(str(tmp_path / "empty.txt"))])


def test_tokenizer_round_trip_and_specials(tokenizer_dir, tokenizer):
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    text = "Knowledge Inheritance, 2022: 3.41 vs 3.58 perplexity — naïve café."
    assert loaded.decode(loaded(text, add_special_tokens=False)["input_ids"]) == text
    for token in ("<s>", "</s>", "<pad>", "<mask>", "<unk>"):
        assert token in loaded.get_vocab()
    assert loaded.mask_token == "<mask>" and loaded.pad_token == "<pad>" and loaded.eos_token == "</s>"
    assert len(loaded) == 512


def test_blocks_are_full_and_cached(tmp_path, wiki_corpus, tokenizer, monkeypatch):
    first = build_blocks(wiki_corpus.train, tokenizer, 64, wiki_corpus.domains, wiki_corpus.fingerprint, "train",
                         tmp_path)
    assert len(first) > 100 and all(len(ids) == 64 for ids in first["input_ids"][:50])
    # Every document ends with </s>, so the stream holds as many separators as documents (minus the dropped tail).
    flat = [t for ids in first["input_ids"] for t in ids]
    assert len(wiki_corpus.train) - 1 <= flat.count(tokenizer.eos_token_id) <= len(wiki_corpus.train)

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(blocks_module, "packed_blocks", fail)
    second = build_blocks(wiki_corpus.train, tokenizer, 64, wiki_corpus.domains, wiki_corpus.fingerprint, "train",
                          tmp_path)
    assert second["input_ids"] == first["input_ids"]
    assert not [p for p in (tmp_path / "blocks").iterdir() if ".tmp-" in p.name]  # no staging left


def test_the_split_streams_as_the_sorted_split_of_its_definition():
    """`split_codes` keeps 16 bytes per document; it splits as sorting the ids by their SHA-1 does: empty texts and
    repeated ids (the first with text counts) left out, the first fraction held out, a slice of the rest kept."""
    import hashlib
    import random

    rng = random.Random(3)
    docs = [(f"d{rng.randrange(400)}", rng.choice(["text", "", "  \n", "more text"])) for _ in range(600)]
    first = {}
    for place, (doc_id, text) in enumerate(docs):
        if text.strip():
            first.setdefault(doc_id, place)
    ranked = sorted(first, key=lambda d: hashlib.sha1(d.encode()).hexdigest())
    held_out = round(0.1 * len(ranked))
    rest = ranked[held_out:]
    kept = rest[round(0.25 * len(rest)):round(0.75 * len(rest))]
    train, validation = split_documents(docs, 0.1, "x", 0.5, 0.25)
    assert train == [docs[p] for p in sorted(first[d] for d in kept)]
    assert validation == [docs[p] for p in sorted(first[d] for d in ranked[:held_out])]


def test_packing_a_batch_at_a_time_cuts_each_domain_as_one_stream(tmp_path, tokenizer, monkeypatch):
    """Documents tokenised three at a time give the blocks of each domain's whole token stream cut at once: only
    a domain's last partial block is dropped; token ids are stored in two bytes."""
    corpus = load_corpus([CorpusSpec("wikipedia", max_documents=8, validation_fraction=0.0),
                          CorpusSpec("shakespeare", max_documents=4, validation_fraction=0.0)], tmp_path)
    monkeypatch.setattr(blocks_module, "DOCUMENTS_PER_BATCH", 3)
    blocks = build_blocks(corpus.train, tokenizer, 48, corpus.domains, corpus.fingerprint, "train", tmp_path)
    expected = []
    for domain_id, domain in enumerate(corpus.domains):
        stream = [t for row in corpus.train if row["domain"] == domain
                  for t in tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
        expected += [(stream[i:i + 48], domain_id) for i in range(0, len(stream) // 48 * 48, 48)]
    assert [(row["input_ids"], row["domain_id"]) for row in blocks] == expected
    assert list(blocks["index"]) == list(range(len(expected)))
    assert str(blocks.features["input_ids"].feature.dtype) == "uint16"


@pytest.mark.parametrize("parts, order", [(3, [2, 0, 1]), (5, [4, 3, 2, 1, 0])])
def test_preparing_in_parts_packs_the_blocks_one_process_makes(tmp_path, tokenizer, parts, order):
    """Parts tokenised by separate calls in any order (some holding no document of a domain, or none at all) pack
    into the blocks of one process, for both splits; only the call that finds every part done packs."""
    specs = [CorpusSpec("wikipedia", max_documents=8, validation_fraction=0.25),
             CorpusSpec("shakespeare", max_documents=4, validation_fraction=0.25)]
    whole = load_corpus(specs, tmp_path / "one")
    for split in ("train", "validation"):
        expected = corpus_blocks(whole, split, tokenizer, 40, tmp_path / "one")
        corpus = load_corpus(specs, tmp_path / "parts")
        packed = [prepare_part(corpus, split, tokenizer, 40, part, parts, tmp_path / "parts") for part in order]
        assert packed == [False] * (parts - 1) + [True]
        made = corpus_blocks(corpus, split, tokenizer, 40, tmp_path / "parts")
        assert made.to_dict() == expected.to_dict() and len(made) > 0
        folder = {Path(blocks.cache_files[0]["filename"]).parent.name for blocks in (made, expected)}
        assert len(folder) == 1  # the same key: runs find the blocks whichever way they were made
    assert not list((tmp_path / "parts" / "documents").glob("*"))  # parts read their sources; nothing copied
    assert sorted(p.name for p in (tmp_path / "parts" / "blocks").iterdir() if not p.name.startswith(".")) == \
        sorted(p.name for p in (tmp_path / "one" / "blocks").iterdir() if not p.name.startswith("."))


def test_parts_are_checked_and_follow_torchrun(monkeypatch):
    from kinherit.training.options import PartArguments

    with pytest.raises(KinheritError, match="--parts 4 needs --part"):
        PartArguments(parts=4)
    with pytest.raises(KinheritError, match="--part 4 of --parts 4"):
        PartArguments(parts=4, part=4)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    launched = PartArguments()
    assert (launched.parts, launched.part) == (3, 2)


def test_a_text_file_too_large_for_one_document_is_refused(tmp_path, monkeypatch):
    from kinherit.data import corpora

    monkeypatch.setattr(corpora, "TEXT_FILE_LIMIT", 100)
    (tmp_path / "big.txt").write_text("word " * 50)
    with pytest.raises(KinheritError, match="big.txt is 0 MiB, and a .txt or .md file is one document"):
        load_corpus([CorpusSpec(str(tmp_path / "big.txt"), validation_fraction=0.0)], tmp_path)


def test_corpus_shorter_than_a_block_is_an_error(tmp_path, tokenizer):
    (tmp_path / "tiny.txt").write_text("too short")
    corpus = load_corpus([CorpusSpec(str(tmp_path / "tiny.txt"), validation_fraction=0.0)])
    with pytest.raises(KinheritError, match="fewer tokens than one block"):
        build_blocks(corpus.train, tokenizer, 512, corpus.domains, corpus.fingerprint, "train", tmp_path)


def test_masking_rates(tokenizer):
    torch.manual_seed(0)
    ids = torch.randint(10, len(tokenizer), (64, 128))
    batch = BlockCollator(tokenizer, masked=True, seed=3)([{"input_ids": row.tolist()} for row in ids])
    selected = batch["labels"] != -100
    rate = selected.float().mean().item()
    assert 0.14 < rate < 0.16
    assert torch.equal(batch["labels"][selected], ids[selected])
    masked = (batch["input_ids"] == tokenizer.mask_token_id) & selected
    unchanged = (batch["input_ids"] == ids) & selected
    n = selected.sum().item()
    assert 0.77 < masked.sum().item() / n < 0.83
    assert 0.08 < unchanged.sum().item() / n < 0.12  # 10% kept (random replacements rarely hit the same id)
    assert torch.equal(batch["input_ids"][~selected], ids[~selected])


def test_fixed_seed_masking_repeats_and_causal_labels(tokenizer):
    rows = [{"input_ids": list(range(10, 74)), "domain_id": 1}]
    a = BlockCollator(tokenizer, masked=True, seed=7)(rows)
    b = BlockCollator(tokenizer, masked=True, seed=7)(rows)
    assert torch.equal(a["input_ids"], b["input_ids"]) and a["domain_id"].tolist() == [1]
    causal = BlockCollator(tokenizer, masked=False)(rows)
    assert torch.equal(causal["labels"], causal["input_ids"])


def test_masks_are_a_function_of_seed_epoch_and_block(tokenizer):
    blocks = [{"input_ids": list(range(10 + i, 74 + i)), "index": 100 + i} for i in range(4)]
    collator = BlockCollator(tokenizer, masked=True, seed=7)
    state = torch.get_rng_state()
    first = collator(blocks)
    assert torch.equal(torch.get_rng_state(), state)  # no global random state consumed
    assert torch.equal(collator(blocks)["input_ids"], first["input_ids"])  # every evaluation sees the same masks
    alone = collator([blocks[2]])  # the same block in another batch, at another position
    assert torch.equal(alone["labels"][0], first["labels"][2])
    collator.set_epoch(1)
    assert not torch.equal(collator(blocks)["labels"], first["labels"])  # masked afresh in each epoch
    other_seed = BlockCollator(tokenizer, masked=True, seed=8)(blocks)
    assert not torch.equal(other_seed["labels"], first["labels"])


def test_load_tokenizer_error(tmp_path):
    with pytest.raises(KinheritError, match="could not load a tokenizer"):
        load_tokenizer(tmp_path)


def test_a_corpus_split_is_remembered_until_its_files_change(tmp_path, monkeypatch):
    from kinherit.data import corpora

    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(json.dumps({"text": f"document {i} " * 9}) for i in range(40)))
    spec = CorpusSpec(str(source), validation_fraction=0.1)
    fresh = load_corpus([spec], tmp_path / "cache")
    assert not (tmp_path / "cache" / "corpora").exists()  # a file this fresh could change unseen: not remembered
    monkeypatch.setattr(corpora, "settled", lambda stat: True)  # as if the file had been written a minute ago
    first = load_corpus([spec], tmp_path / "cache")
    assert first.fingerprint == fresh.fingerprint and len(list((tmp_path / "cache" / "corpora").iterdir())) == 1

    def unread(*args, **kwargs):
        raise AssertionError("the corpus was read again")

    with monkeypatch.context() as patched:
        patched.setattr(corpora, "split_codes", unread)
        patched.setattr(corpora.Corpus, "_fingerprint", unread)
        again = load_corpus([spec], tmp_path / "cache")
        assert again.fingerprint == first.fingerprint
        assert [len(again.train), len(again.validation)] == [len(first.train), len(first.validation)] == [36, 4]
        with pytest.raises(AssertionError, match="read again"):  # another split of the same file is not recalled
            load_corpus([CorpusSpec(str(source), validation_fraction=0.2)], tmp_path / "cache")
    with source.open("a") as handle:  # a changed file: split and fingerprinted anew
        handle.write("\n" + json.dumps({"text": "one more document " * 9}))
    grown = load_corpus([spec], tmp_path / "cache")
    assert grown.fingerprint != first.fingerprint and grown.count("train") + grown.count("validation") == 41


def test_an_unreadable_split_memo_is_replaced(tmp_path, caplog, monkeypatch):
    from kinherit.data import corpora

    monkeypatch.setattr(corpora, "settled", lambda stat: True)
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(json.dumps({"text": f"document {i} " * 9}) for i in range(20)))
    spec = CorpusSpec(str(source), validation_fraction=0.1)
    first = load_corpus([spec], tmp_path / "cache")
    (memo,) = (tmp_path / "cache" / "corpora").iterdir()
    (memo / "codes-0.npy").write_bytes(b"not an array")
    again = load_corpus([spec], tmp_path / "cache")
    assert "ignoring the corpus split memo" in caplog.text and again.fingerprint == first.fingerprint
    assert load_corpus([spec], tmp_path / "cache").count("train") == first.count("train")


def test_sealed_files_are_hashed_again_only_once_they_change(tmp_path, monkeypatch):
    import os

    from kinherit.core import sealed

    folder = tmp_path / "blocks"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"a" * 4096)
    sealed.seal(folder)
    hashed = []
    digest = sealed.file_digest
    monkeypatch.setattr(sealed, "file_digest", lambda path, flush=False: hashed.append(path.name) or digest(path))
    sealed.verify(folder, "block cache", remember=True)
    assert hashed == ["data.bin"]  # too fresh to be remembered yet
    monkeypatch.setattr(sealed, "SETTLED_SECONDS", -1.0)  # as if it had been written a minute ago
    sealed.verify(folder, "block cache", remember=True)
    sealed.verify(folder, "block cache", remember=True)
    assert hashed == ["data.bin"] * 2 and sealed.verified_stamp(folder).is_file()
    stat = (folder / "data.bin").stat()
    (folder / "data.bin").write_bytes(b"b" * 4096)  # the same size, its modification time put back
    os.utime(folder / "data.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(KinheritError, match="corrupt"):
        sealed.verify(folder, "block cache", remember=True)
