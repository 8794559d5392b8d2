"""Reliability: interrupted runs resume exactly; checkpoints and caches cut short or corrupted are detected and
refused; unusual but valid input (a padded-vocabulary teacher) works."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from resume_worker import small_data

from kinherit.commands.pretrain import pretrain
from kinherit.core.errors import KinheritError
from kinherit.core.sealed import MANIFEST, last_good_checkpoint, rotate_checkpoints, seal, verify
from kinherit.models.loading import load_model
from kinherit.training.load_teachers import load_teacher
from kinherit.training.options import InheritanceArguments, KinheritTrainingArguments, ModelArguments

WORKER = Path(__file__).with_name("resume_worker.py")
STEPS = 24


@pytest.fixture(scope="module")
def masked_teacher(tmp_path_factory, tokenizer_dir):
    out = tmp_path_factory.mktemp("resume") / "teacher"
    args = KinheritTrainingArguments(output_dir=str(out), max_steps=20, eval_strategy="no", save_strategy="no",
                                     report_to="none", disable_tqdm=True, use_cpu=True)
    data = small_data(str(tokenizer_dir), str(out.parent / "cache"))
    pretrain(ModelArguments(model="roberta-1x64"), data, InheritanceArguments(), args)
    return out


def run_worker(**settings) -> int:
    done = subprocess.run([sys.executable, str(WORKER), json.dumps(settings)], capture_output=True, text=True,
                          timeout=600)
    if done.returncode not in (0, -9):
        raise AssertionError(f"worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.returncode


def log_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def records(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in log_lines(run_dir) if key in r}


def test_sigkilled_ki_run_resumes_to_the_same_curve(tmp_path_factory, tokenizer_dir, masked_teacher):
    """A masked-LM KI run (random masking, dropout, decaying alpha, a second epoch) killed at a random step after
    the second checkpoint, resumed inside its second epoch, ends as the uninterrupted run does."""
    tmp_path = tmp_path_factory.mktemp("keep")
    common = {"tokenizer": str(tokenizer_dir), "cache": str(tmp_path / "cache"), "teacher": str(masked_teacher),
              "model": "roberta-2x64", "max_steps": STEPS}
    run_worker(output_dir=str(tmp_path / "whole"), **common)
    kill_at = random.Random(8).randrange(17, STEPS)  # after the checkpoint of step 16, before the end
    assert run_worker(output_dir=str(tmp_path / "cut"), kill_at=kill_at, **common) == -9
    cut = tmp_path / "cut"
    assert not (cut / "run.json").exists()
    assert last_good_checkpoint(cut) == str(cut / "checkpoint-16")
    assert 1 < json.loads((cut / "checkpoint-16" / "trainer_state.json").read_text())["epoch"] < 2
    run_worker(output_dir=str(cut), resume="auto", **common)
    whole, resumed = records(tmp_path / "whole", "eval_loss"), records(cut, "eval_loss")
    assert sorted(resumed) == sorted(whole) == list(range(0, STEPS + 1, 4))
    evaluated = [r["step"] for r in log_lines(cut) if "eval_loss" in r]
    assert evaluated == list(range(0, STEPS + 1, 4))  # one record per step: the resumed run does not evaluate at once
    for step, loss in whole.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), f"validation loss differs at step {step}"
    assert records(cut, "inherit/alpha") == pytest.approx(records(tmp_path / "whole", "inherit/alpha"))
    assert records(cut, "loss") == pytest.approx(records(tmp_path / "whole", "loss"), rel=1e-5)
    assert json.loads((cut / "run.json").read_text())["steps"] == STEPS
    verify(cut, "model")  # the final model is sealed
    load_model(str(cut))


def make_checkpoint(run_dir: Path, step: int, sealed: bool = True) -> Path:
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (folder / "trainer_state.json").write_text("{}")
    if sealed:
        seal(folder)
    return folder


def test_unsealed_checkpoints_are_skipped_and_corrupt_ones_refused(tmp_path):
    make_checkpoint(tmp_path, 100)
    make_checkpoint(tmp_path, 200, sealed=False)  # killed while it was being written
    assert last_good_checkpoint(tmp_path) == str(tmp_path / "checkpoint-100")
    good = tmp_path / "checkpoint-100" / "model.safetensors"
    good.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(KinheritError, match=r"checkpoint-100/model.safetensors has 1014 bytes .* truncated"):
        last_good_checkpoint(tmp_path)
    good.write_bytes(bytes(range(255, -1, -1)) * 4)  # same size, other bytes
    with pytest.raises(KinheritError, match=r"checkpoint-100/model.safetensors is corrupt"):
        last_good_checkpoint(tmp_path)
    with pytest.raises(KinheritError, match=f"checkpoint-200 is incomplete: it has no {MANIFEST}"):
        verify(tmp_path / "checkpoint-200", "checkpoint")


def test_rotation_keeps_the_newest_sealed_checkpoints(tmp_path):
    for step in (100, 200, 300):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 250, sealed=False)
    make_checkpoint(tmp_path, 400, sealed=False)  # left by an earlier, longer attempt: overwritten later
    rotate_checkpoints(tmp_path, keep=2, step=300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-200", "checkpoint-300", "checkpoint-400"]


def test_rotation_spares_the_kept_steps(tmp_path):
    for step in (100, 200, 300, 400):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 150, sealed=False)  # a kept step cut short while saving is still a leftover
    rotate_checkpoints(tmp_path, keep=1, step=400, kept_steps=[100, 150, 300])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-100", "checkpoint-300", "checkpoint-400"]


def test_unfinished_final_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "log.jsonl").write_text("")
    with pytest.raises(KinheritError, match="did not finish saving its model; resume that run"):
        load_model(str(tmp_path))


def test_unknown_architecture_is_a_clear_error(tmp_path, tokenizer):
    folder = tmp_path / "foreign"
    folder.mkdir()
    config = {"model_type": "frobnitz", "architectures": ["FrobnitzForCausalLM"]}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(folder)
    with pytest.raises(KinheritError, match=r"model type 'frobnitz' is not known to transformers .*remote_code"):
        load_model(str(folder))
    with pytest.raises(KinheritError, match="model type 'frobnitz'"):
        load_teacher(str(folder), tokenizer, "causal")


def test_a_teacher_path_that_does_not_exist_is_named(tmp_path):
    from kinherit.data import load_tokenizer
    from kinherit.models.loading import load_config

    with pytest.raises(KinheritError, match=f"model path {tmp_path}/final does not exist or has no config.json"):
        load_config(str(tmp_path / "final"))
    with pytest.raises(KinheritError, match=f"tokenizer folder '{tmp_path}/final' does not exist"):
        load_tokenizer(tmp_path / "final")


def test_truncated_weights_of_a_foreign_checkpoint_are_a_clear_error(tmp_path, tokenizer):
    model = load_model("llama-1x64", tokenizer, 32)
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(KinheritError, match="could not load model weights from .*complete checkpoint"):
        load_model(str(tmp_path))


def test_corrupt_block_cache_is_refused_naming_the_file(tmp_path, tokenizer, wiki_corpus):
    from kinherit.data import build_blocks

    def build():
        return build_blocks(wiki_corpus.validation, tokenizer, 32, wiki_corpus.domains, wiki_corpus.fingerprint,
                            "validation", tmp_path)

    first = build()
    assert build()["input_ids"] == first["input_ids"]  # read back from the sealed cache
    (arrow,) = (tmp_path / "blocks").rglob("*.arrow")
    data = bytearray(arrow.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrow.write_bytes(bytes(data))
    with pytest.raises(KinheritError, match=rf"block cache file {arrow} is corrupt.*delete that folder"):
        build()


def test_padded_vocabulary_teacher_works(tmp_path, tokenizer, tokenizer_dir):
    """A teacher whose output layer has more rows than the tokenizer (padded to a multiple) teaches normally."""
    teacher = load_model("llama-1x64", tokenizer, 32)
    teacher.resize_token_embeddings(len(tokenizer) + 64)
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    args = KinheritTrainingArguments(output_dir=str(tmp_path / "student"), max_steps=4, eval_steps=4, logging_steps=2,
                                     save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True)
    data = small_data(str(tokenizer_dir), str(tmp_path / "cache"))
    data.block_size = 32
    summary = pretrain(ModelArguments(model="llama-1x64"), data,
                       InheritanceArguments(teacher=[str(tmp_path / "teacher")], inherit_steps=4), args)
    assert summary["steps"] == 4 and summary["final_val_loss"] < 7.0
    kl = records(tmp_path / "student", "inherit/ki_loss")
    assert kl and all(0.0 <= value < 10.0 for value in kl.values())


def test_resume_restores_time_and_flops_from_the_checkpoint(tmp_path, tokenizer_dir):
    """Saving every 3 steps but logging every 4: the counters come from the checkpoint, not from a log record."""
    def run(output, resume=None):
        args = KinheritTrainingArguments(output_dir=str(output), max_steps=6, logging_steps=4, save_steps=3,
                                         save_total_limit=None, eval_strategy="no", report_to="none",
                                         disable_tqdm=True, use_cpu=True, per_device_train_batch_size=8,
                                         resume_from_checkpoint=resume)
        data = small_data(str(tokenizer_dir), str(tmp_path / "cache"))
        data.block_size, data.validation_fraction = 32, 0.0
        return pretrain(ModelArguments(model="llama-1x64"), data, InheritanceArguments(), args)

    whole = run(tmp_path / "whole")
    counters = json.loads((tmp_path / "whole" / "checkpoint-3" / "kinherit_counters.json").read_text())
    assert 0 < counters["train_flops"] < whole["train_flops"] and counters["train_seconds"] > 0
    resumed = run(tmp_path / "whole", resume=str(tmp_path / "whole" / "checkpoint-3"))
    assert resumed["train_flops"] == whole["train_flops"]  # 3 steps restored + 3 steps counted
    assert resumed["train_seconds"] > counters["train_seconds"]
