"""Every command the README shows, run through the `kinherit` entry point on a tiny corpus, and a fuzz of the
command line over names and paths: no traceback, no write outside the output folder."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from fake_runs import fake_pretrain
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kinherit.cli import HANDLERS, main

TINY = ["--corpus", "wikipedia", "--max_documents", "20", "--validation_fraction", "0.1", "--block_size", "32"]
QUIET = ["--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true"]


@pytest.mark.parametrize("command", sorted(HANDLERS))
def test_every_command_parses_its_options(command, capsys):
    """`kinherit COMMAND --help` works for every command: two option classes defining one flag fail here."""
    with pytest.raises(SystemExit) as stopped:
        main([command, "--help"])
    assert stopped.value.code == 0
    assert f"usage: kinherit {command}" in capsys.readouterr().out


def test_readme_commands_run_end_to_end(tmp_path, tokenizer_dir, capsys):
    """The README's commands in the order a user meets them: a tokenizer, a prepared corpus, a teacher, a teacher
    cache (its output given with a trailing slash), a student reading it, evaluate, grow, finetune, an experiment
    and its report, presets and corpora."""
    cache = ["--cache_dir", str(tmp_path / "blocks")]
    assert main(["tokenizer", str(tmp_path / "tok"), "--corpus", "wikipedia", "--max_documents", "5",
                 "--vocab_size", "300"]) == 0
    assert (tmp_path / "tok" / "tokenizer.json").exists()
    # prepared in two parts, as two machines would: the second to finish packs the blocks
    assert main(["prepare", "--tokenizer", str(tokenizer_dir), *TINY, *cache, "--parts", "2", "--part", "1"]) == 0
    assert "train: part 1 of 2 tokenised" in capsys.readouterr().out
    assert main(["prepare", "--tokenizer", str(tokenizer_dir), *TINY, *cache, "--parts", "2", "--part", "0"]) == 0
    assert "train: 18 documents" in capsys.readouterr().out
    def block_folders() -> list[str]:  # not the hidden locks and hash stamps beside them
        return sorted(path.name for path in (tmp_path / "blocks" / "blocks").iterdir() if not path.name.startswith("."))

    prepared = block_folders()
    teacher = tmp_path / "teacher"
    assert main(["pretrain", "--model", "llama-1x64", "--tokenizer", str(tokenizer_dir), *TINY, *cache, *QUIET,
                 "--max_steps", "6", "--eval_steps", "3", "--output_dir", str(teacher)]) == 0
    # the teacher's run found the prepared blocks and built none of its own
    assert block_folders() == prepared
    plan = tmp_path / "plan"
    assert main(["plan", "--model", "llama-1x64", "--teacher", str(teacher), "--tokenizer", str(teacher), *TINY,
                 *cache, *QUIET, "--max_steps", "16", "--inherit_steps", "16", "--pilot_fraction", "0.5",
                 "--evaluations", "4", "--output_dir", str(plan)]) == 0
    assert "pilots: 8 of 16 steps each" in capsys.readouterr().out
    assert json.loads((plan / "plan.json").read_text())["verdict"] and (plan / "plan.png").exists()
    for part in ("1", "0"):  # two parts again, each running the teacher over every other shard
        assert main(["cache-teacher", "--teacher", str(teacher), *TINY, *cache, "--temperature", "0.5", "--top_k",
                     "8", "--output", f"{tmp_path / 'teacher-cache'}/", "--blocks_per_shard", "8", "--parts", "2",
                     "--part", part]) == 0
    out = capsys.readouterr().out
    assert out.index("part 1 of 2 cached") < out.index("positions at top-8")  # the last part sealed it
    assert json.loads((tmp_path / "teacher-cache" / "cache.json").read_text())["settings"]["top_k"] == 8
    student = tmp_path / "student"
    assert main(["pretrain", "--model", "llama-2x64", "--tokenizer", str(teacher), "--teacher_cache",
                 str(tmp_path / "teacher-cache"), "--temperature", "0.5", "--inherit_steps", "4", *TINY, *cache,
                 *QUIET, "--max_steps", "6", "--eval_steps", "3", "--output_dir", str(student)]) == 0
    # a teacher with another tokenizer (the 300-token one above), live and through a cache of its mapped targets
    other = ["--tokenizer", str(tmp_path / "tok"), *TINY, *cache]
    assert main(["pretrain", "--model", "llama-1x64", "--teacher", str(teacher), "--cross_tokenizer", "map",
                 "--temperature", "0.5", "--inherit_steps", "4", *other, *QUIET, "--max_steps", "4",
                 "--output_dir", str(tmp_path / "cross-live")]) == 0
    live = json.loads((tmp_path / "cross-live" / "run.json").read_text())["cross_tokenizer"]
    assert live["method"] == "map" and live["aligned_share"] > 0.5
    # interrupted after step 2 and resumed: the shares still count the whole run, not the resumed part only
    again = ["pretrain", "--model", "llama-1x64", "--teacher", str(teacher), "--cross_tokenizer", "map",
             "--temperature", "0.5", "--inherit_steps", "4", *other, *QUIET, "--max_steps", "4", "--save_steps", "2",
             "--save_total_limit", "2", "--output_dir", str(tmp_path / "cross-resumed")]
    assert main(again) == 0
    shutil.rmtree(tmp_path / "cross-resumed" / "checkpoint-4")
    (tmp_path / "cross-resumed" / "run.json").unlink()
    assert main([*again, "--resume_from_checkpoint", "auto"]) == 0
    resumed = json.loads((tmp_path / "cross-resumed" / "run.json").read_text())["cross_tokenizer"]
    assert resumed["aligned_share"] == live["aligned_share"]
    assert resumed["mapped_mass_share"] == pytest.approx(live["mapped_mass_share"], rel=1e-9)
    assert main(["cache-teacher", "--teacher", str(teacher), "--cross_tokenizer", "map", "--temperature", "0.5",
                 "--top_k", "8", *other, "--output", str(tmp_path / "cross-cache")]) == 0
    assert main(["pretrain", "--model", "llama-1x64", "--teacher_cache", str(tmp_path / "cross-cache"),
                 "--temperature", "0.5", "--inherit_steps", "4", *other, *QUIET, "--max_steps", "4",
                 "--output_dir", str(tmp_path / "cross-cached")]) == 0
    cached = json.loads((tmp_path / "cross-cached" / "run.json").read_text())["cross_tokenizer"]
    assert cached == json.loads((tmp_path / "cross-cache" / "cache.json").read_text())["cross_tokenizer"]
    for part in ("1", "0"):  # built in two parts, the cache's shares still count every shard
        assert main(["cache-teacher", "--teacher", str(teacher), "--cross_tokenizer", "map", "--temperature", "0.5",
                     "--top_k", "8", *other, "--output", str(tmp_path / "cross-parts"), "--blocks_per_shard", "8",
                     "--parts", "2", "--part", part]) == 0
    parts = json.loads((tmp_path / "cross-parts" / "cache.json").read_text())["cross_tokenizer"]
    assert parts["aligned_share"] == cached["aligned_share"]
    assert parts["mapped_mass_share"] == pytest.approx(cached["mapped_mass_share"], rel=1e-9)
    assert cached["aligned_share"] > 0.5 and cached["vocabulary"] == live["vocabulary"]
    assert main(["evaluate", str(student), "--corpus", "wikipedia", "--max_documents", "20", *cache,
                 "--json", str(tmp_path / "evaluate.json")]) == 0
    assert json.loads((tmp_path / "evaluate.json").read_text())
    assert main(["grow", str(teacher), str(tmp_path / "grown"), "--to", "llama-2x128"]) == 0
    assert main(["finetune", str(student), "--task", "rotten-tomatoes", "--seeds", "0", "--learning_rates", "1e-3",
                 "--epochs", "1", "--max_train_examples", "32", "--max_length", "32",
                 "--output_dir", str(tmp_path / "finetune")]) == 0
    config = {"name": "mini", "output_dir": str(tmp_path / "experiment"), "tokenizer": {"path": str(tokenizer_dir)},
              "corpora": {"wiki": {"source": "wikipedia", "max_documents": 20, "validation_fraction": 0.1}},
              "defaults": {"block_size": 32, "max_steps": 4, "eval_steps": 2, "report_to": "none",
                           "disable_tqdm": True},
              "runs": [{"name": "scratch", "model": "llama-1x64"}]}
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(config))
    assert main(["experiment", str(tmp_path / "mini.yaml"), "--finetune", "false"]) == 0
    assert main(["report", str(tmp_path / "experiment")]) == 0
    assert (tmp_path / "experiment" / "reports" / "mini" / "report.md").exists()
    assert main(["presets"]) == 0 and main(["corpora"]) == 0
    assert "llama-4x256" in capsys.readouterr().out


# ------------------------------------------------------------------ fuzz: names and paths

# ABSOLUTE stands for an absolute path inside the example's sandbox (a bug writes there, never elsewhere)
ABSOLUTE = "<absolute>"
NAMES = (st.sampled_from(["../escaped", "../../x", ABSOLUTE, "a/b", ".", "..", "", ".hidden", "-flag", "ok",
                          "run.1", "a\\b", "x" * 120, "~", "tab\tname", "nul\x00"])
         | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12).filter(
             lambda name: not name.startswith("/")))


EXAMPLES = itertools.count()


def tree(root: Path) -> set[str]:
    """Every path under `root`, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(experiment=NAMES, run=NAMES, group=NAMES)
@example(experiment="ok", run="run.1", group="ok").via("a valid experiment runs")
@example(experiment="ok", run="../../escaped", group="ok").via("the escape a review found")
def test_experiment_names_never_escape_the_output_folder(tmp_path, tokenizer_dir, monkeypatch, capsys, experiment,
                                                         run, group):
    """Any experiment, run or group name either runs inside the output folder or is refused with a message."""
    import kinherit.commands.pretrain

    monkeypatch.setattr(kinherit.commands.pretrain, "pretrain", fake_pretrain())
    sandbox = tmp_path / f"s{next(EXAMPLES)}"
    output = sandbox / "outer" / "out"
    output.mkdir(parents=True)
    experiment, run, group = (str(sandbox / "absolute") if name == ABSOLUTE else name
                              for name in (experiment, run, group))
    config = {"name": experiment, "output_dir": str(output), "tokenizer": {"path": str(tokenizer_dir)},
              "corpora": {"wiki": {"source": "wikipedia", "max_documents": 5}},
              "runs": [{"name": run, "model": "llama-1x64", "max_steps": 1, "group": group}]}
    path = sandbox / "x.yaml"
    path.write_text(yaml.safe_dump(config))
    before = tree(sandbox)
    code = main(["experiment", str(path), "--finetune", "false"])
    assert code in (0, 2)
    if code == 2:
        assert "kinherit: error:" in capsys.readouterr().err
    outside = {p for p in tree(sandbox) - before if not p.startswith(os.path.join("outer", "out"))}
    assert not outside, f"written outside the output folder: {sorted(outside)}"


# Relative paths only, at most two levels up: however wrong the code under test, a deletion it makes stays
# inside the example's own sandbox (home is two levels below it).
PATHS = st.sampled_from([".", "..", "../out", "sub/../..", "", "a/b/", "out/", "~", "notes", "notes/..", "new",
                         "new/", "./notes//"]) | st.text(alphabet="ab./", min_size=1, max_size=6).filter(
    lambda path: not path.startswith("/") and path.count("..") <= 2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(output=PATHS)
def test_tokenizer_output_paths_never_delete_anything(tmp_path, monkeypatch, capsys, output):
    """`kinherit tokenizer PATH` from a folder holding a user's files: whatever PATH is, no file that existed is
    changed or removed, and the answer is a saved tokenizer or an error message. ("/" is refused too, but is not
    fuzzed: code with this bug would delete the machine's files.)"""
    home = tmp_path / f"h{next(EXAMPLES)}" / "user" / "work"
    (home / "notes").mkdir(parents=True, exist_ok=True)
    (home / "notes" / "notes.txt").write_text("mine")
    (home / "diary.txt").write_text("mine too")
    monkeypatch.chdir(home)
    monkeypatch.setenv("HOME", str(home))
    before = {p: p.read_bytes() for p in home.parent.parent.rglob("*") if p.is_file()}
    code = main(["tokenizer", output, "--corpus", "wikipedia", "--max_documents", "3", "--vocab_size", "300"])
    assert code in (0, 2), capsys.readouterr().err
    for path, content in before.items():
        assert path.is_file() and path.read_bytes() == content, f"{path} was changed by `kinherit tokenizer {output}`"
