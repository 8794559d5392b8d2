"""Several processes on CPU (gloo): torchrun with 2 processes trains exactly as 1 process with the same global batch.

Each launch is a real `torchrun ... -m kinherit pretrain` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainingArguments

from kinherit.commands.pretrain import pretrain
from kinherit.core.errors import KinheritError
from kinherit.core.sealed import is_sealed
from kinherit.experiment.runner import run_experiment
from kinherit.inheritance.teachers import TeacherSet, freeze
from kinherit.models.loading import load_model
from kinherit.training.options import DataArguments, InheritanceArguments, KinheritTrainingArguments, ModelArguments
from kinherit.training.trainer import InheritanceTrainer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def loopback_rendezvous() -> dict[str, str | int]:
    """torchrun options for one machine that name its address, not `localhost` (`--standalone` resolves the host's
    names, which a machine without /etc/hosts cannot)."""
    return {"nnodes": 1, "master_addr": "127.0.0.1", "master_port": free_port()}


def torchrun(processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
            *[f"--{key}={value}" for key, value in loopback_rendezvous().items()]]

WORKER = Path(__file__).with_name("parallel_worker.py")
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
           model: str = "llama-2x64", prefix: list[str] | None = None) -> Path:
    """Run `kinherit pretrain` under torchrun (or plainly for 1 process, or under `prefix`); return the run folder."""
    done = start(workdir, tokenizer_dir, name, processes, batch, *extra, model=model, prefix=prefix)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return workdir / name


def start(workdir: Path, tokenizer_dir: Path, name: str, processes: int, batch: int, *extra: str,
          model: str = "llama-2x64", prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    out = workdir / name
    if prefix is None:
        prefix = torchrun(processes) if processes > 1 else [sys.executable]
    command = [*prefix, "-m", "kinherit", "pretrain", "--model", model, "--tokenizer", str(tokenizer_dir),
               "--block_size", "32", "--max_documents", "30", "--validation_fraction", "0.1",
               "--cache_dir", str(workdir / "cache"), "--output_dir", str(out), "--max_steps", str(STEPS),
               "--per_device_train_batch_size", str(batch), "--learning_rate", "3e-3", "--warmup_steps", "0",
               "--eval_steps", "2", "--logging_steps", "1", "--save_steps", "4", "--save_total_limit", "2",
               "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--loss_kernels", "eager",
               "--seed", "3", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def curve(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records(run_dir) if key in r}


@pytest.fixture(scope="module")
def two_processes(workdir, tokenizer_dir, teacher) -> Path:
    return launch(workdir, tokenizer_dir, "ddp2", 2, BLOCKS, "--teacher", str(teacher), "--inherit_steps", "6",
                  "--temperature", "2")


def test_two_processes_train_as_one_with_the_same_global_batch(workdir, tokenizer_dir, teacher, two_processes):
    with ThreadPoolExecutor(2) as pool:  # two one-thread processes at once, one per core
        one, half = pool.map(lambda name, batch: launch(workdir, tokenizer_dir, name, 1, batch, "--teacher",
                                                        str(teacher), "--inherit_steps", "6", "--temperature", "2",
                                                        "--save_strategy", "no"), ("one", "half"), (2 * BLOCKS, BLOCKS))
    for key in ("eval_loss", "loss", "inherit/self_loss", "inherit/ki_loss"):
        ddp, single, other = curve(two_processes, key), curve(one, key), curve(half, key)
        assert ddp.keys() == single.keys() and len(ddp) >= 4, key
        gaps = [abs(ddp[s] - single[s]) for s in ddp]
        assert max(gaps) < 2e-4, (key, ddp, single)
        if key == "eval_loss":  # the tolerance tells batches apart: half the global batch trains differently
            assert max(abs(other[s] - single[s]) for s in single if s > 0) > 100 * max(gaps) + 1e-3
    # the FLOPs of both processes are counted, and the teacher ran on both
    assert curve(two_processes, "train_flops")[STEPS] == pytest.approx(curve(one, "train_flops")[STEPS], rel=1e-6)
    # the same with gradient accumulation (2 processes x 2 micro-batches of half the blocks), with the
    # teacher sharded over the two processes (FSDP2) instead of copied, and under `accelerate launch`
    accumulated = launch(workdir, tokenizer_dir, "accumulated", 2, BLOCKS // 2, "--teacher", str(teacher),
                         "--inherit_steps", "6", "--temperature", "2", "--gradient_accumulation_steps", "2",
                         "--save_strategy", "no")
    sharded = launch(workdir, tokenizer_dir, "sharded-teacher", 2, BLOCKS, "--teacher", str(teacher),
                     "--inherit_steps", "6", "--temperature", "2", "--teacher_placement", "shard",
                     "--save_strategy", "no")
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
                  "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"]
    accelerated = launch(workdir, tokenizer_dir, "accelerate", 2, BLOCKS, "--teacher", str(teacher),
                         "--inherit_steps", "6", "--temperature", "2", "--save_strategy", "no", prefix=accelerate)
    for run in (accumulated, sharded, accelerated):
        assert curve(run, "eval_loss").keys() == curve(one, "eval_loss").keys()
        assert all(abs(curve(run, "eval_loss")[s] - loss) < 2e-4 for s, loss in curve(one, "eval_loss").items())


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


@pytest.fixture(scope="module")
def worker_output(workdir, tokenizer_dir) -> str:
    done = subprocess.run([*torchrun(2), str(WORKER), str(tokenizer_dir), str(workdir / "worker")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=420)
    assert done.returncode == 0, done.stderr[-6000:]
    return done.stdout


def lines(output: str, tag: str) -> list:
    return [json.loads(line[len(tag) + 1:]) for line in output.splitlines() if line.startswith(tag + " ")]


def test_fsdp2_sharded_student_and_teachers_match_one_unsharded_process(worker_output):
    """FSDP2 (torch's fully_shard) on CPU with gloo: the loss and every gradient, causal and masked.

    The Trainer's `--fsdp` goes through accelerate, which applies FSDP only on GPU-class devices, so on
    CPU the same sharding is applied here directly and the trainer's loss runs on the sharded model.
    """
    results = lines(worker_output, "RESULT")
    assert [(r["preset"], r["placement"]) for r in results] == [
        ("llama-2x64", "replicate"), ("llama-2x64", "shard"), ("roberta-2x64", "shard")]
    for result in results:
        assert result["sharded_parameters"] == result["parameters"], result
        assert result["teacher_sharded"] == (result["placement"] == "shard"), result
        assert result["loss"] == pytest.approx(result["whole_loss"], rel=1e-5), result
        assert result["max_relative_grad_gap"] < 1e-5, result
        assert result["eval_loss"] == pytest.approx(result["whole_eval_loss"], rel=1e-5), result


def test_a_teacher_loaded_shard_by_shard_equals_the_whole_one_at_half_the_weights(worker_output):
    for loaded in lines(worker_output, "LOADED"):
        assert [r["preset"] for r in loaded] in (["llama-2x64"] * 2, ["roberta-2x64"] * 2)
        for rank in loaded:
            assert rank["max_logit_gap"] == 0.0 and rank["frozen"], rank
            # each process reads its rows only: at most half the elements, plus one row per parameter
            assert rank["local_elements"] <= rank["elements"] / 2 + 64 * 200, rank
        assert sum(r["local_elements"] for r in loaded) == loaded[0]["elements"], loaded
    assert len(lines(worker_output, "LOADED")) == 2


def test_a_nonfinite_loss_on_one_process_is_decided_on_by_all(worker_output):
    (skip,) = lines(worker_output, "NONFINITE")
    # both processes skip the batch with zero gradients, and the next step synchronises as usual
    assert [r["rank"] for r in skip] == [0, 1]
    assert all(r["skipped"] == 1 and r["zero_grads"] and r["synchronised"] for r in skip), skip


def test_cross_tokenizer_shares_count_every_process(worker_output):
    """20 of 40 taught positions aligned over both processes (rank 0 alone: 8 of 10), 14 of their mass mapped."""
    (report,) = lines(worker_output, "CROSS")
    assert report["aligned_share"] == 0.5 and report["mapped_mass_share"] == 0.7


def test_uneven_validation_parts_join_every_gather(worker_output):
    """3 validation blocks on 2 processes, one per forward pass, sharded student and teacher, adaptive schedule:
    the process with fewer blocks runs a discarded pass instead of leaving the other waiting in a gather."""
    (uneven,) = lines(worker_output, "UNEVEN")
    assert uneven["positions"] == 3 * 31, uneven
    assert uneven["eval_loss"] == pytest.approx(uneven["whole_eval_loss"], rel=1e-5), uneven
    assert uneven["teacher_loss"] == pytest.approx(uneven["whole_teacher_loss"], rel=1e-5), uneven


def test_parallel_setups_that_cannot_work_are_refused(tmp_path, tokenizer, workdir, tokenizer_dir, teacher):
    # on CPU accelerate would silently run DDP instead of FSDP
    done = start(workdir, tokenizer_dir, "fsdp-on-cpu", 2, BLOCKS, "--teacher", str(teacher), "--inherit_steps", "6",
                 "--fsdp", "full_shard")
    assert done.returncode != 0 and "--fsdp was given but this run is not sharded" in done.stderr
    assert "Leave out --fsdp to train with DDP" in done.stderr and not (workdir / "fsdp-on-cpu" / "run.json").exists()
    student = load_model("llama-1x64", tokenizer, 32)
    teachers = TeacherSet([freeze(load_model("llama-1x64", tokenizer, 32))])
    with pytest.raises(KinheritError, match="shard needs several processes"):
        InheritanceTrainer(model=student, args=TrainingArguments(str(tmp_path), report_to="none", use_cpu=True),
                           teachers=teachers, inherit_args=InheritanceArguments(inherit_steps=10,
                                                                                teacher_placement="shard"),
                           vocab_size=len(tokenizer))
    with pytest.raises(KinheritError, match="--teacher_placement 'all' is not one of replicate, shard"):
        InheritanceArguments(teacher_placement="all")


def test_experiment_runs_each_run_under_its_launcher(tmp_path, capsys):
    config = {
        "name": "mini-ddp", "output_dir": str(tmp_path / "out"),
        "launcher": {"nproc_per_node": 2, **loopback_rendezvous()},
        "tokenizer": {"corpus": "wiki", "vocab_size": 400},
        "corpora": {"wiki": {"source": "wikipedia", "validation_fraction": 0.1, "max_documents": 20}},
        "defaults": {"block_size": 32, "per_device_train_batch_size": 4, "eval_steps": 5, "logging_steps": 5,
                     "save_steps": 5,
                     "training_args": {"report_to": "none", "disable_tqdm": True, "use_cpu": True}},
        "runs": [{"name": "teacher", "model": "llama-1x64", "max_steps": 10},
                 {"name": "scratch", "model": "llama-2x64", "max_steps": 10},
                 {"name": "ki", "model": "llama-2x64", "max_steps": 10, "teachers": ["teacher"],
                  "baseline": "scratch", "inherit": {"inherit_steps": 5, "loss_kernels": "eager"}}]}
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(config))
    report = run_experiment(path)
    out = tmp_path / "out"
    printed = capsys.readouterr().out
    assert "-m torch.distributed.run --" in printed and "--nproc_per_node=2" in printed
    assert "-m kinherit pretrain" in printed
    arguments = json.loads((out / "runs" / "ki" / "launch.json").read_text())
    assert arguments["teacher"] == [str(out / "runs" / "teacher")] and arguments["per_device_train_batch_size"] == 4
    assert report["compute_saved"]["ki"]["ki_final_val_loss"] == json.loads(
        (out / "runs" / "ki" / "run.json").read_text())["final_val_loss"]
    assert torch.isfinite(torch.tensor(report["compute_saved"]["ki"]["ki_final_val_loss"]))
    run_experiment(path)
    assert capsys.readouterr().out.count("done, skipped") == 3


def test_torchrun_prepares_a_corpus_in_parts_into_the_blocks_one_process_makes(tmp_path, tokenizer_dir):
    """`torchrun ... -m kinherit prepare`: each rank tokenises its part, the last packs: one process's blocks."""
    from datasets import Dataset

    options = ["--tokenizer", str(tokenizer_dir), "--block_size", "32", "--max_documents", "30",
               "--validation_fraction", "0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, prefix in (("one", [sys.executable]), ("ranks", torchrun(2))):
        done = subprocess.run([*prefix, "-m", "kinherit", "prepare", *options, "--cache_dir", str(tmp_path / name)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folders = {name: sorted(p for p in (tmp_path / name / "blocks").iterdir() if not p.name.startswith("."))
               for name in ("one", "ranks")}
    assert [f.name for f in folders["one"]] == [f.name for f in folders["ranks"]] and len(folders["one"]) == 2
    for one, ranks in zip(folders["one"], folders["ranks"], strict=True):
        assert is_sealed(ranks)
        assert Dataset.from_file(str(one / "blocks.arrow"))["input_ids"] == \
            Dataset.from_file(str(ranks / "blocks.arrow"))["input_ids"]
