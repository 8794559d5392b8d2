"""What a user can lose or get stuck on: existing folders are never deleted unasked, names and paths stay inside
their folder, shared folders are locked, sealed folders are on disk before older ones go, and bad input or a
half-written checkpoint is a clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import require_native_kernels
from fake_runs import fake_pretrain

from kinherit.cli import main
from kinherit.core.atomic import write_text_atomic
from kinherit.core.errors import KinheritError
from kinherit.core.locks import exclusive
from kinherit.core.sealed import MANIFEST, seal
from kinherit.data import CorpusSpec, load_corpus
from kinherit.data.tasks import load_task
from kinherit.models.lm import process_part
from kinherit.training.options import InheritanceArguments
from kinherit.training.teacher_cache import partial_folder

QUIET = ["--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true"]


def tiny_run(tokenizer_dir: Path, tmp_path: Path, output: Path, *extra: str, steps: int = 4) -> list[str]:
    return ["pretrain", "--model", "llama-1x64", "--tokenizer", str(tokenizer_dir), "--corpus", "wikipedia",
            "--max_documents", "20", "--validation_fraction", "0.1", "--block_size", "32", "--cache_dir",
            str(tmp_path / "blocks"), "--max_steps", str(steps), "--eval_steps", "2", "--save_strategy", "no",
            "--output_dir", str(output), *QUIET, *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tokenizer_dir) -> Path:
    """A finished run folder: final model, run.json, log.jsonl; no checkpoints."""
    tmp_path = tmp_path_factory.mktemp("finished")
    assert main(tiny_run(tokenizer_dir, tmp_path, tmp_path / "run")) == 0
    return tmp_path / "run"


# ------------------------------------------------------------------ 1: the tokenizer never deletes a folder

def test_tokenizer_refuses_an_existing_folder_and_replaces_only_its_own(tmp_path, capsys):
    argv = ["--corpus", "wikipedia", "--max_documents", "5", "--vocab_size", "300"]
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    for overwrite in ("false", "true"):
        assert main(["tokenizer", str(home), *argv, "--overwrite", overwrite]) == 2
        assert (home / "notes.txt").read_text() == "mine" and sorted(p.name for p in home.iterdir()) == ["notes.txt"]
    assert "not a tokenizer folder written by kinherit" in capsys.readouterr().err
    assert main(["tokenizer", str(tmp_path / "tok"), *argv]) == 0
    assert main(["tokenizer", str(tmp_path / "tok"), *argv]) == 2
    assert "pass --overwrite true" in capsys.readouterr().err
    (tmp_path / "tok" / "mine.txt").write_text("mine")
    assert main(["tokenizer", str(tmp_path / "tok"), *argv, "--overwrite", "true"]) == 2
    assert "holds files that are not part of its tokenizer (mine.txt)" in capsys.readouterr().err
    (tmp_path / "tok" / "mine.txt").unlink()
    assert main(["tokenizer", str(tmp_path / "tok"), *argv, "--vocab_size", "320", "--overwrite", "true"]) == 0
    assert "320 tokens" in capsys.readouterr().out and (tmp_path / "tok" / MANIFEST).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tok")]  # nothing staged is left behind


def test_the_root_folder_is_never_a_tokenizer_output():
    from kinherit.data.tokenizer import check_tokenizer_output

    for replace in (False, True):
        with pytest.raises(KinheritError, match="already exists|not a tokenizer folder"):
            check_tokenizer_output("/", replace)


# ------------------------------------------------------------------ 2: a finished run is not overwritten unasked

def test_a_fresh_run_refuses_a_finished_run_folder(tmp_path, tokenizer_dir, finished_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(tiny_run(tokenizer_dir, tmp_path, run)) == 2
    assert "holds an earlier run (a final model (" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert main(tiny_run(tokenizer_dir, tmp_path, run, "--overwrite_output_dir", "true", steps=2)) == 0
    assert json.loads((run / "run.json").read_text())["steps"] == 2


# ------------------------------------------------------------------ 3: names are checked once, at parse time

@pytest.mark.parametrize("name", ["../escaped", "/abs", "a/b", "..", ".hidden", ""])
def test_run_and_experiment_names_are_single_plain_folder_names(name):
    from kinherit.experiment.spec import parse_experiment

    base = {"name": "ok", "corpora": {"wiki": {"source": "wikipedia"}},
            "runs": [{"name": "r", "model": "llama-1x64", "max_steps": 1}]}
    for data in ({**base, "name": name}, {**base, "runs": [{**base["runs"][0], "name": name}]},
                 {**base, "runs": [{**base["runs"][0], "group": name}]}):
        with pytest.raises(KinheritError, match="not a valid name|has no name|must be a non-empty string"):
            parse_experiment(data, output_dir="out")


def test_a_report_refuses_a_manifest_naming_a_run_outside_the_folder(tmp_path):
    from kinherit.experiment.report import write_report

    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "x.json").write_text(json.dumps({"runs": {"../../etc": {"teachers": []}}}))
    with pytest.raises(KinheritError, match="not a valid name"):
        write_report(tmp_path, "x")


# ------------------------------------------------------------------ 4: a cache's partial folder is its sibling

@pytest.mark.parametrize("output", ["out/", "out", "./out//", "sub/../out"])
def test_a_cache_builds_beside_its_output_whatever_the_spelling(tmp_path, monkeypatch, output):
    monkeypatch.chdir(tmp_path)
    assert partial_folder(output) == tmp_path / "out.partial"


# ------------------------------------------------------------------ 5: shared folders are locked

def test_a_second_pretrain_into_a_held_folder_is_refused(tmp_path, tokenizer_dir, capsys):
    with exclusive(tmp_path / "run"):
        assert main(tiny_run(tokenizer_dir, tmp_path, tmp_path / "run")) == 2
    assert "another process is writing to" in capsys.readouterr().err
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_shared_tokenizer_being_built_is_waited_for_not_rebuilt(tmp_path, tokenizer_dir, monkeypatch):
    """Two experiments sharing a folder: the second waits for the first's tokenizer and uses it."""
    import kinherit.data
    from kinherit.experiment.runner import ensure_tokenizer
    from kinherit.experiment.spec import parse_experiment

    experiment = parse_experiment({"name": "x", "corpora": {"wiki": {"source": "wikipedia", "max_documents": 5}},
                                   "tokenizer": {"corpus": "wiki", "vocab_size": 300},
                                   "runs": [{"name": "r", "model": "llama-1x64", "max_steps": 1}]},
                                  output_dir=str(tmp_path / "out"))

    def never(*args, **kwargs):
        raise AssertionError("the tokenizer was trained a second time")

    monkeypatch.setattr(kinherit.data, "train_tokenizer", never)
    target = tmp_path / "out" / "tokenizer"
    held = threading.Event()

    def first_builder():
        with exclusive(target):
            held.set()
            time.sleep(1.0)
            shutil.copytree(tokenizer_dir, target)

    thread = threading.Thread(target=first_builder)
    thread.start()
    held.wait()
    assert ensure_tokenizer(experiment) == target
    thread.join()
    assert (target / "tokenizer.json").exists()


def test_a_lock_is_released_when_its_holder_dies(tmp_path):
    code = (f"from kinherit.core.locks import exclusive\nwith exclusive({str(tmp_path / 'x')!r}):\n"
            "    import os; os._exit(9)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 9
    with exclusive(tmp_path / "x", wait=False):
        pass


# ------------------------------------------------------------------ 6: sealed folders are on disk first

def test_sealing_flushes_every_file_and_folder_before_the_manifest(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint-4"
    (folder / "sub").mkdir(parents=True)
    for name in ("model.safetensors", "trainer_state.json", "sub/rng.pth"):
        (folder / name).write_bytes(os.urandom(64))
    flushed: list[str] = []
    real = os.fsync

    def recording(descriptor):
        flushed.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real(descriptor)

    monkeypatch.setattr(os, "fsync", recording)
    seal(folder)
    manifest = next(i for i, p in enumerate(flushed) if Path(p).name.startswith(f".{MANIFEST}.tmp"))
    before = set(flushed[:manifest])
    assert {str(folder / n) for n in ("model.safetensors", "trainer_state.json", "sub/rng.pth")} <= before
    assert {str(folder), str(folder / "sub")} <= before
    assert {str(folder), str(tmp_path)} <= set(flushed[manifest:])  # the manifest's name, and the folder's


def test_an_atomic_write_is_flushed_before_its_rename(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(os, "fsync", lambda d: calls.append(os.readlink(f"/proc/self/fd/{d}")))
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("rename"), real_replace(a, b)))
    write_text_atomic(tmp_path / "run.json", "{}")
    assert calls[1] == "rename" and calls[0].endswith(".tmp-" + str(os.getpid())) and calls[2] == str(tmp_path)


# ------------------------------------------------------------------ 7: validation parts run the same passes

@pytest.mark.parametrize("blocks, processes, batch, sizes, forwards", [
    (3, 2, 1, [2, 1], 2), (1, 2, 4, [1, 0], 1), (10, 3, 2, [4, 3, 3], 2), (4, 2, 2, [2, 2], 1)])
def test_every_process_part_runs_as_many_forward_passes_as_the_largest(blocks, processes, batch, sizes, forwards):
    from datasets import Dataset

    dataset = Dataset.from_dict({"input_ids": [[i] * 4 for i in range(blocks)]})
    parts = [process_part(dataset, processes, index, batch) for index in range(processes)]
    assert [len(part) for part, _ in parts] == sizes
    assert {even.forwards for _, even in parts} == {forwards}
    assert sum(len(part) for part, _ in parts) == blocks


# ------------------------------------------------------------------ 8: a stale kernel-build lock

def test_a_kernel_build_lock_left_by_a_killed_build_is_removed(tmp_path):
    from kinherit.inheritance.kernels import native

    require_native_kernels()
    stale = native.build_folder() / "lock"
    stale.touch()  # what torch leaves when a build is killed
    code = "from kinherit.inheritance.kernels import native; assert native.kernels() is not None"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "left by a kernel build that was killed" in done.stderr and not stale.exists()


# ------------------------------------------------------------------ 9 to 15: clear errors, nothing silent

def test_resuming_from_a_final_model_folder_is_a_clear_error(tmp_path, tokenizer_dir, finished_run, capsys):
    argv = tiny_run(tokenizer_dir, tmp_path, tmp_path / "next", "--resume_from_checkpoint", str(finished_run))
    assert main(argv) == 2
    assert "is not a training checkpoint" in capsys.readouterr().err


def test_finetune_refuses_an_unfinished_run_and_a_truncated_checkpoint(tmp_path, finished_run, capsys):
    half = tmp_path / "half"
    shutil.copytree(finished_run, half)
    (half / MANIFEST).unlink()
    (half / "run.json").unlink()  # killed while saving its final model
    argv = ["--task", "rotten-tomatoes", "--seeds", "0", "--epochs", "1", "--max_train_examples", "16",
            "--output_dir", str(tmp_path / "ft")]
    assert main(["finetune", str(half), *argv]) == 2
    assert "did not finish saving its model" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    shutil.copytree(finished_run, foreign, ignore=shutil.ignore_patterns(MANIFEST, "log.jsonl", "run.json"))
    weights = foreign / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["finetune", str(foreign), *argv]) == 2
    assert "could not load model weights from" in capsys.readouterr().err


def test_a_report_reads_a_log_whose_last_line_was_cut(tmp_path, finished_run):
    from kinherit.experiment.report import read_curve

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    whole = read_curve(run)
    with (run / "log.jsonl").open("a") as handle:
        handle.write('{"step": 9, "eval_lo')
    assert read_curve(run) == whole and whole


def test_a_diverged_loss_prints_a_capped_perplexity(tmp_path, tokenizer_dir, monkeypatch, capsys):
    import yaml

    import kinherit.commands.pretrain

    monkeypatch.setattr(kinherit.commands.pretrain, "pretrain", fake_pretrain(loss=900.0))
    config = {"name": "x", "output_dir": str(tmp_path / "out"), "tokenizer": {"path": str(tokenizer_dir)},
              "corpora": {"wiki": {"source": "wikipedia", "max_documents": 5}},
              "runs": [{"name": "r", "model": "llama-1x64", "max_steps": 1}]}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(config))
    assert main(["experiment", str(tmp_path / "x.yaml")]) == 0
    assert "validation loss 900.0000 (ppl 5184705528587072045056.0)" in capsys.readouterr().out


def read_corpus(path: Path) -> None:
    load_corpus([CorpusSpec(str(path))])


def read_task(path: Path) -> None:
    load_task(str(path))


@pytest.mark.parametrize("read, name, content, message", [
    (read_corpus, "bad.jsonl", b'{"text": "a"}\n{"text": \n', "bad.jsonl:2 is not valid JSON"),
    (read_corpus, "list.jsonl", b'["a"]\n', "list.jsonl:1 is a JSON list, not an object"),
    (read_corpus, "latin.jsonl", '{"text": "caf\u00e9"}\n'.encode("latin-1"), "latin.jsonl is not UTF-8 text"),
    (read_task, "t.csv", b"text,label\n" + b"a" * 200_000 + b",1\n", "t.csv is not a valid CSV file"),
    (read_task, "t.jsonl", b'{"text": "a", "label": 1}\nnot json\n', "t.jsonl:2 is not valid JSON"),
    (read_task, "t2.csv", "text,label\ncaf\u00e9,1\n".encode("latin-1"), "t2.csv is not UTF-8 text"),
])
def test_malformed_input_files_are_clear_errors(tmp_path, read, name, content, message):
    """Corpus and task files alike: the file (and line) named, never a parser's traceback."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(KinheritError, match=message):
        read(tmp_path / name)


def test_an_unreadable_corpus_file_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        path = tmp_path / "folder.txt"
        path.mkdir()
        (path / "x").write_text("x")  # a folder named like a file: reading it fails as a permission error would
        with pytest.raises(KinheritError, match="cannot read"):
            from kinherit.data.input_files import read_text

            read_text(path)
    else:
        path = tmp_path / "secret.txt"
        path.write_text("x")
        path.chmod(0)
        with pytest.raises(KinheritError, match="cannot read"):
            load_corpus([CorpusSpec(str(path))])


def test_non_utf8_text_is_replaced_and_counted(tmp_path, caplog):
    (tmp_path / "a.txt").write_bytes("caf\u00e9 cr\u00e8me ".encode("latin-1") * 3)
    corpus = load_corpus([CorpusSpec(str(tmp_path / "a.txt"), validation_fraction=0.0)])
    assert "\ufffd" in corpus.train[0]["text"]
    assert "a.txt is not valid UTF-8: 6 characters were replaced by U+FFFD" in caplog.text


def test_continuing_a_checkpoint_with_another_tokenizer_is_refused(tmp_path, finished_run, capsys):
    other = tmp_path / "other-tok"
    assert main(["tokenizer", str(other), "--corpus", "shakespeare", "--max_documents", "5",
                 "--vocab_size", "300"]) == 0
    argv = tiny_run(other, tmp_path, tmp_path / "continued")
    argv[argv.index("--model") + 1] = str(finished_run)
    assert main(argv) == 2
    assert "differs from the one the checkpoint" in capsys.readouterr().err


def test_a_batch_without_taught_positions_adds_a_zero_loss_not_nan(tmp_path, tokenizer):
    from transformers import TrainingArguments

    from kinherit.inheritance.teachers import TeacherSet, freeze
    from kinherit.models.loading import load_model
    from kinherit.training.trainer import InheritanceTrainer

    student = load_model("llama-1x64", tokenizer, 32)
    trainer = InheritanceTrainer(model=student, args=TrainingArguments(str(tmp_path), report_to="none", use_cpu=True),
                                 teachers=TeacherSet([freeze(load_model("llama-1x64", tokenizer, 32))]),
                                 inherit_args=InheritanceArguments(inherit_steps=10), vocab_size=len(tokenizer))
    ids = torch.randint(5, len(tokenizer), (2, 32))
    batch = {"input_ids": ids, "labels": torch.full_like(ids, -100), "attention_mask": torch.ones_like(ids)}
    student.train()
    count = trainer._get_num_items_in_batch([batch], "cpu")
    assert int(count) == 0
    loss = trainer.compute_loss(student, batch, num_items_in_batch=count)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in student.parameters())
