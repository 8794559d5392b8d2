"""Several processes on CPU (gloo): torchrun with 2 processes trains exactly as 1 process with the same global batch.

Each launch is a real `torchrun ... -m kinherit pretrain` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kinherit.pretrain import DataArguments, KinheritTrainingArguments, ModelArguments, pretrain
from kinherit.sealed import is_sealed
from kinherit.trainer import InheritanceArguments

STEPS = 8
BLOCKS = 4  # per process and step


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def teacher(workdir, tokenizer_dir) -> Path:
    args = KinheritTrainingArguments(output_dir=str(workdir / "teacher"), max_steps=60, eval_strategy="no",
                                     save_strategy="no", report_to="none", disable_tqdm=True, learning_rate=3e-3,
                                     per_device_train_batch_size=16, use_cpu=True)
    data = DataArguments(tokenizer=str(tokenizer_dir), block_size=32, max_documents=30, validation_fraction=0.1,
                         cache_dir=str(workdir / "cache"))
    pretrain(ModelArguments(model="llama-1x64"), data, InheritanceArguments(), args)
    return workdir / "teacher"


def launch(workdir: Path, tokenizer_dir: Path, name: str, processes: int, batch: int, *extra: str,
           model: str = "llama-2x64") -> Path:
    """Run `kinherit pretrain` under torchrun (or plainly for 1 process); return the run folder."""
    out = workdir / name
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    command = [*prefix, "-m", "kinherit", "pretrain", "--model", model, "--tokenizer", str(tokenizer_dir),
               "--block_size", "32", "--max_documents", "30", "--validation_fraction", "0.1",
               "--cache_dir", str(workdir / "cache"), "--output_dir", str(out), "--max_steps", str(STEPS),
               "--per_device_train_batch_size", str(batch), "--learning_rate", "3e-3", "--warmup_steps", "0",
               "--eval_steps", "2", "--logging_steps", "1", "--save_steps", "4", "--save_total_limit", "2",
               "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--compile_loss", "false",
               "--seed", "3", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return out


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def curve(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records(run_dir) if key in r}


@pytest.fixture(scope="module")
def two_processes(workdir, tokenizer_dir, teacher) -> Path:
    return launch(workdir, tokenizer_dir, "ddp2", 2, BLOCKS, "--teacher", str(teacher), "--inherit_steps", "6",
                  "--temperature", "2")


def test_two_processes_train_as_one_with_the_same_global_batch(workdir, tokenizer_dir, teacher, two_processes):
    one = launch(workdir, tokenizer_dir, "one", 1, 2 * BLOCKS, "--teacher", str(teacher), "--inherit_steps", "6",
                 "--temperature", "2", "--save_strategy", "no")
    half = launch(workdir, tokenizer_dir, "half", 1, BLOCKS, "--teacher", str(teacher), "--inherit_steps", "6",
                  "--temperature", "2", "--save_strategy", "no")
    for key in ("eval_loss", "loss", "inherit/self_loss", "inherit/ki_loss"):
        ddp, single, other = curve(two_processes, key), curve(one, key), curve(half, key)
        assert ddp.keys() == single.keys() and len(ddp) >= 4, key
        gaps = [abs(ddp[s] - single[s]) for s in ddp]
        assert max(gaps) < 2e-4, (key, ddp, single)
        if key == "eval_loss":  # the tolerance tells batches apart: half the global batch trains differently
            assert max(abs(other[s] - single[s]) for s in single if s > 0) > 100 * max(gaps) + 1e-3
    # the FLOPs of both processes are counted, and the teacher ran on both
    assert curve(two_processes, "train_flops")[STEPS] == pytest.approx(curve(one, "train_flops")[STEPS], rel=1e-6)


def test_only_the_main_process_writes_and_a_second_launch_resumes(workdir, tokenizer_dir, teacher, two_processes):
    steps = [r["step"] for r in records(two_processes) if "loss" in r]
    assert steps == list(range(1, STEPS + 1))  # one record per step: one writer
    assert (two_processes / "run.json").exists() and is_sealed(two_processes)
    checkpoints = sorted(p.name for p in two_processes.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4", "checkpoint-8"]
    for name in checkpoints:  # sealed after every process wrote its part
        manifest = json.loads((two_processes / name / "kinherit-manifest.json").read_text())
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest["files"])
    assert not list(two_processes.glob(".*tmp*")) and not (two_processes / ".final.staging").exists()

    # as if killed after checkpoint-4: a second launch on the same folder resumes from it, on the same curve
    resumed = workdir / "resumed"
    resumed.mkdir()
    shutil.copytree(two_processes / "checkpoint-4", resumed / "checkpoint-4")
    shutil.copy(two_processes / "log.jsonl", resumed / "log.jsonl")
    launch(workdir, tokenizer_dir, "resumed", 2, BLOCKS, "--teacher", str(teacher), "--inherit_steps", "6",
           "--temperature", "2", "--resume_from_checkpoint", "auto")
    before, after = curve(two_processes, "eval_loss"), curve(resumed, "eval_loss")
    assert after.keys() == before.keys()
    assert all(after[s] == pytest.approx(before[s], abs=1e-5) for s in before), (before, after)
    assert [r["step"] for r in records(resumed) if "loss" in r] == list(range(1, STEPS + 1))
