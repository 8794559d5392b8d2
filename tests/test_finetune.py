"""`kinherit finetune`: tasks and their splits, users' files, bad input, and an end-to-end fine-tuning that learns."""

from __future__ import annotations

import json
import random

import pytest
import torch
from datasets import Dataset

from kinherit.cli import main
from kinherit.commands.finetune import finetune, scores
from kinherit.core.errors import KinheritError
from kinherit.data.tasks import BUILTIN_TASKS, load_task, split_by_group
from kinherit.models.loading import load_model
from kinherit.training.options import FinetuneArguments

WORDS = {"sport": ["match", "goal", "team", "score", "coach"], "money": ["bank", "price", "stock", "market", "loan"]}


def synthetic_rows(count: int, seed: int) -> list[dict]:
    """Sentences whose label is the topic of their content words, padded with shared filler words."""
    rng = random.Random(seed)
    filler = ["the", "a", "of", "and", "was", "on", "history", "city"]
    rows = []
    for i in range(count):
        label = rng.choice(sorted(WORDS))
        words = rng.sample(WORDS[label], 2) + rng.sample(filler, 4)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label, "doc": f"d{i // 3}"})
    return rows


@pytest.mark.parametrize("name", list(BUILTIN_TASKS))
def test_builtin_tasks_split_by_source_document_deterministically(name):
    task = load_task(name)
    groups = {split: {e.group for e in examples} for split, examples in task.splits.items()}
    assert not groups["train"] & groups["dev"] and not groups["train"] & groups["test"]
    assert not groups["dev"] & groups["test"]
    summary = task.summary()
    assert all(count > 0 for split in summary.values() for count in split.values())  # every label in every split
    again = load_task(name)
    assert [e.text for e in again.splits["test"]] == [e.text for e in task.splits["test"]]


def test_users_files_in_each_format(tmp_path):
    rows = synthetic_rows(90, 0)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (tmp_path / "t.csv").open("w") as handle:
        handle.write("text,label,doc\n" + "".join(f"{r['text']},{r['label']},{r['doc']}\n" for r in rows))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "t.parquet"))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    tasks = [load_task(str(tmp_path / name), group_field="doc") for name in ("t.jsonl", "t.csv", "t.parquet", "saved")]
    assert all(t.labels == ["money", "sport"] for t in tasks)
    assert len({tuple(e.text for e in t.splits["test"]) for t in tasks}) == 1  # the same split from every format
    integers = [{**r, "label": int(r["label"] == "sport")} for r in rows]
    (tmp_path / "i.jsonl").write_text("".join(json.dumps(r) + "\n" for r in integers))
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in integers[:10]))
    dev = str(tmp_path / "dev.jsonl")
    own = load_task(str(tmp_path / "i.jsonl"), dev_file=dev, test_file=dev)
    assert own.labels == ["0", "1"] and len(own.splits["train"]) == 90 and len(own.splits["dev"]) == 10


def test_bad_tasks_are_clear_errors(tmp_path):
    rows = synthetic_rows(30, 1)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(KinheritError, match=r"has no field 'category'.*--label_field"):
        load_task(str(tmp_path / "t.jsonl"), label_field="category")
    (tmp_path / "one.jsonl").write_text("".join(json.dumps({**r, "label": "x"}) + "\n" for r in rows))
    with pytest.raises(KinheritError, match="single class"):
        load_task(str(tmp_path / "one.jsonl"))
    few = [{"text": "a b", "label": "x", "doc": "1"}, {"text": "c d", "label": "y", "doc": "2"}]
    (tmp_path / "few.jsonl").write_text("".join(json.dumps(r) + "\n" for r in few))
    with pytest.raises(KinheritError, match="leaves no examples for its"):
        load_task(str(tmp_path / "few.jsonl"), group_field="doc")
    with pytest.raises(KinheritError, match="does not exist"):
        load_task(str(tmp_path / "none.jsonl"))
    with pytest.raises(KinheritError, match="not a model checkpoint folder"):
        finetune(FinetuneArguments(checkpoint=str(tmp_path), task="rotten-tomatoes"))


def test_scores_and_group_split():
    assert scores([0, 0, 1, 1], [0, 1, 1, 1], 2) == pytest.approx({"accuracy": 0.75, "macro_f1": (2 / 3 + 0.8) / 2})
    from kinherit.data.tasks import Example

    examples = [Example(f"t{i}", "ab"[i % 2], f"g{i // 4}") for i in range(200)]
    splits = split_by_group(examples)
    assert {split: len(part) for split, part in splits.items()} == {"train": 160, "dev": 20, "test": 20}


def test_finetuning_learns_a_task_and_keeps_its_result(tmp_path, tokenizer):
    torch.manual_seed(0)
    checkpoint = tmp_path / "model"
    load_model("llama-1x64", tokenizer, 64).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(300, 2)))
    argv = ["finetune", str(checkpoint), "--task", str(tmp_path / "task.jsonl"), "--group_field", "doc",
            "--seeds", "0", "1", "--learning_rates", "1e-3", "3e-3", "--epochs", "4", "--batch_size", "16",
            "--max_length", "16", "--output_dir", str(tmp_path / "out")]
    assert main(argv) == 0
    (saved,) = (tmp_path / "out").glob("task.jsonl-*.json")
    result = json.loads(saved.read_text())
    assert result["selected"]["dev_accuracy"] > 0.8 > result["majority_test_accuracy"]
    assert result["accuracy"]["mean"] > 0.8 and len(result["test"]) == 2
    assert {(g["learning_rate"], g["epoch"]) for g in result["dev_grid"]} == {
        (lr, e) for lr in (1e-3, 3e-3) for e in (1, 2, 3, 4)}
    again = finetune(FinetuneArguments(checkpoint=str(checkpoint), task=str(tmp_path / "task.jsonl"),
                                       group_field="doc", seeds=[0, 1], learning_rates=[1e-3, 3e-3], epochs=4,
                                       batch_size=16, max_length=16, output_dir=str(tmp_path / "out")))
    assert again["cached"] is True and again["accuracy"] == result["accuracy"]
