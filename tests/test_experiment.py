"""Experiment YAML schema, dependency order, seeds, skip-what-is-done, and the compute-saved analysis."""

from __future__ import annotations

import copy
import json
import re
import threading

import pytest
import yaml

from kinherit.core.errors import KinheritError
from kinherit.experiment.compute_saved import EvalPoint, compute_saved, crossing, downstream_saved, summarise
from kinherit.experiment.layout import read_results
from kinherit.experiment.report import write_report
from kinherit.experiment.runner import run_experiment, run_lock
from kinherit.experiment.spec import load_experiment, parse_experiment, run_arguments

BASE = {"name": "x", "corpora": {"wiki": {"source": "wikipedia"}},
        "runs": [{"name": "teacher", "model": "llama-2x64"},
                 {"name": "scratch", "model": "llama-2x128"},
                 {"name": "ki", "model": "llama-2x128", "teachers": ["teacher"], "baseline": "scratch",
                  "inherit": {"inherit_steps": 10}}]}


def with_runs(runs, **extra):
    return {**BASE, "runs": runs, **extra}


def test_valid_experiment_orders_teachers_first():
    experiment = parse_experiment(dict(BASE), output_dir="/tmp/unused")
    order = experiment.order()
    assert order.index("teacher") < order.index("ki")
    assert run_arguments(experiment, experiment.runs["ki"])[3].learning_rate == 1e-3  # the option's own default
    assert experiment.order(only=["ki"]) == ["teacher", "ki"]


@pytest.mark.parametrize("data, message", [
    ({**BASE, "runz": []}, r"unknown key\(s\) \['runz'\] in the experiment; valid keys"),
    (with_runs([{"name": "a", "model": "llama-2x64", "lr": 1}]), r"unknown key\(s\) \['lr'\] in run 'a'; valid keys"),
    (with_runs([{"name": "a", "model": "m", "batch_size": 4}]), r"unknown key\(s\) \['batch_size'\]"),
    (with_runs([{"name": "a", "model": "m", "inherit": {"fused_loss": False}}]), "'fused_loss' is now loss_kernels"),
    (with_runs([{"name": "a", "model": "m", "output_dir": "x"}]), "'output_dir' is set by the experiment itself"),
    (with_runs([{"name": "a", "model": "m", "max_steps": 3, "training_args": {"max_steps": 5}}]),
     r"\['max_steps'\] given both in training_args: and outside it"),
    (with_runs([{"name": "a", "model": "m", "inherit": {"stepz": 1}}]), r"\['stepz'\] in run 'a' inherit"),
    (with_runs([{"name": "a", "model": "m", "teachers": ["b"]}, {"name": "b", "model": "m", "teachers": ["a"]}]),
     "dependency cycle between runs: a -> b -> a"),
    (with_runs([{"name": "a", "model": "m", "teachers": ["ghost"]}]), "unknown run 'ghost'"),
    (with_runs([{"name": "a", "model": "m"}, {"name": "a", "model": "m"}]), "must be unique"),
    (with_runs([{"name": "a", "model": "m", "corpus": "web"}]), "defined corpora"),
    (with_runs([{"name": "a"}]), "has no model"),
    (with_runs([{"name": "a", "model": "m", "corpus": []}]), "run 'a' has an empty corpus list"),
    ({**with_runs([{"name": "a", "model": "m"}]), "defaults": {"corpus": []}}, "run 'a' has an empty corpus list"),
    ({**with_runs([{"name": "a", "model": "m"}]), "defaults": {"corpus": {}}},
     "defaults: corpus must be a name or a list of names"),
    ({"name": "x", "runs": []}, "needs name, corpora and runs"),
    (with_runs([{"name": "a", "model": "m", "max_steps": "many"}]), "run 'a': .*--max_steps.*invalid int value"),
    (with_runs([{"name": "a", "model": "m", "max_steps": 0}]), "run 'a': --max_steps must be positive, got 0"),
    (with_runs([{"name": "a", "model": "m", "learning_rate": -1}]), "--learning_rate must be positive, got -1"),
    (with_runs([{"name": "a", "model": "m", "inherit": {"temperature": "hot"}}]), "--temperature.*invalid float"),
    (with_runs([{"name": "a", "model": "m", "inherit": {"loss_kernels": "fast"}}]), "--loss_kernels must be one of"),
    (with_runs([{"name": "a", "model": "m", "seeds": None},
                {"name": "b", "model": "m", "seeds": [0], "baseline": "a"}]),
     "run 'a': seeds must be a non-empty list of integers"),
    ({**BASE, "finetune_options": {"seeds": "many"}}, "finetune_options: .*--seeds.*invalid int value"),
    ({**BASE, "finetune_options": {"task": "x"}}, r"finetune_options \['task'\] are set by the experiment"),
    (with_runs([{"name": "a", "model": "m", "finetune": "no-such-task"}]), "neither a built-in task"),
    (with_runs([{"name": "a", "model": "m", "finetune": [3]}]), "finetune must be a name or a list of names"),
    (with_runs([{"name": "a", "model": "m", "finetune": ["rotten-tomatoes"], "finetune_steps": [0]}]),
     "finetune_steps must be a list of distinct positive steps, got \\[0\\]"),
    (with_runs([{"name": "a", "model": "m", "finetune": ["rotten-tomatoes"], "finetune_steps": [5, 5]}]),
     "finetune_steps must be a list of distinct positive steps"),
    (with_runs([{"name": "a", "model": "m", "finetune_steps": [5]}]), "has finetune_steps but no finetune tasks"),
    (with_runs([{"name": "a", "model": "m", "max_steps": 10, "finetune": ["rotten-tomatoes"],
                 "finetune_steps": [5, 20]}]), r"finetune_steps \[20\] lie beyond its max_steps 10"),
    ({**BASE, "corpora": {"wiki": {"source": "wikipedia", "validation_fraction": 1.5}}},
     r"validation_fraction must be in \[0, 1\), got 1.5"),
])
def test_invalid_experiments_are_clear_errors(data, message):
    with pytest.raises(KinheritError, match=message):
        parse_experiment(data, output_dir="/tmp/unused")


@pytest.mark.parametrize("run, message", [
    ({"training_args": {"no_such_field": 1}}, r"unknown key\(s\) \['no_such_field'\] in run 'ki' training_args"),
    ({"training_args": {"eval_strategy": "sometimes"}}, "run 'ki': invalid option: sometimes is not a valid"),
    ({"inherit": {"inherit_steps": 10, "inherit_schedule": "sigmoid"}}, "run 'ki': .*unknown inheritance schedule"),
    ({"inherit": {"inherit_steps": 10, "inherit_start": 2.0}}, "run 'ki': .*start must be in"),
])
def test_run_settings_checked_before_anything_runs(tmp_path, run, message):
    ki = {k: v for k, v in {**BASE["runs"][2], **run}.items() if k != "baseline"}
    with pytest.raises(KinheritError, match=message):
        parse_experiment(with_runs([BASE["runs"][0], ki]), output_dir=str(tmp_path))


def test_numbers_written_without_a_dot_and_teacher_weights_are_read(tmp_path):
    runs = [{"name": "t1", "model": "llama-1x64"}, {"name": "t2", "model": "llama-1x64"},
            {"name": "ki", "model": "llama-2x64", "teachers": ["t1", "t2"], "teacher_weights": [3, 1],
             "learning_rate": "5e-4", "inherit": {"inherit_steps": 10, "temperature": "1e0"}}]
    experiment = parse_experiment(yaml.safe_load(yaml.safe_dump(with_runs(runs))), output_dir=str(tmp_path))
    _model, _data, inherit, training = run_arguments(experiment, experiment.runs["ki"])
    assert training.learning_rate == 5e-4 and inherit.temperature == 1.0
    assert inherit.teacher_weights == [3.0, 1.0]


def test_seeds_expand_and_pair_runs():
    runs = [{"name": "teacher", "model": "m"},
            {"name": "scratch", "model": "m", "seeds": [0, 1]},
            {"name": "ki", "model": "m", "seeds": [0, 1], "teachers": ["teacher"], "baseline": "scratch",
             "inherit": {"inherit_steps": 5}}]
    experiment = parse_experiment(with_runs(runs), output_dir="/tmp/unused")
    assert set(experiment.runs) == {"teacher", "scratch-s0", "scratch-s1", "ki-s0", "ki-s1"}
    assert experiment.runs["ki-s1"].baseline == "scratch-s1" and experiment.runs["ki-s1"].teachers == ["teacher"]
    assert experiment.runs["ki-s1"].seed == 1 and experiment.runs["ki-s1"].group == "ki"


def test_a_group_joins_runs_seeded_by_hand_as_one_arm():
    # a second seed added beside a run already trained keeps that run's name (it is not retrained)
    runs = [{"name": "teacher", "model": "m"}, {"name": "scratch", "model": "m"},
            {"name": "ki", "model": "m", "teachers": ["teacher"], "baseline": "scratch", "inherit_steps": 5},
            {"name": "ki-s1", "model": "m", "seed": 1, "group": "ki", "teachers": ["teacher"], "baseline": "scratch",
             "inherit_steps": 5}]
    experiment = parse_experiment(with_runs(runs), output_dir="/tmp/unused")
    assert experiment.runs["ki-s1"].group == experiment.runs["ki"].group == "ki"
    assert experiment.runs["ki-s1"].seed == 1 and experiment.runs["scratch"].group == "scratch"
    with pytest.raises(KinheritError, match="group 3 is not a valid name"):
        parse_experiment(with_runs([{"name": "a", "model": "m", "group": 3}]), output_dir="/tmp/unused")


def test_an_empty_list_overrides_the_defaults_tasks():
    data = with_runs([{"name": "a", "model": "m"}, {"name": "b", "model": "m", "finetune": []}])
    data["defaults"] = {**data.get("defaults", {}), "finetune": ["rotten-tomatoes"]}
    experiment = parse_experiment(data, output_dir="/tmp/unused")
    assert experiment.runs["a"].finetune == ["rotten-tomatoes"] and experiment.runs["b"].finetune == []


def test_yaml_file_errors(tmp_path):
    with pytest.raises(KinheritError, match="does not exist"):
        load_experiment(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(KinheritError, match="not valid YAML"):
        load_experiment(tmp_path / "bad.yaml")


def curve(points):
    return [EvalPoint(step=s, loss=loss, flops=s * 10.0, seconds=s * 2.0) for s, loss in points]


def test_compute_saved_interpolates_the_crossing():
    baseline = curve([(0, 9.0), (100, 6.0), (200, 5.0)])
    ki = curve([(0, 9.0), (50, 6.0), (100, 4.0), (200, 3.5)])
    result = compute_saved(ki, baseline, teacher_loss=4.5)
    # 5.0 is crossed halfway between step 50 (6.0) and 100 (4.0): step 75 of 200
    assert result["steps_fraction"] == pytest.approx(0.375)
    assert result["flops_fraction"] == pytest.approx(0.375) and result["time_fraction"] == pytest.approx(0.375)
    assert result["ki_beats_teacher"] is True and result["ki_beats_baseline"] is True
    assert result["ki_val_loss_at_equal_steps"][1] == {"step": 50, "ki": 6.0, "baseline": 7.5}


def test_downstream_saved_interpolates_the_accuracy_crossing():
    def results(points):
        return {str(step): {"accuracy": {"mean": mean, "std": 0.01}} for step, mean in points}

    baseline = results([(100, 0.1), (300, 0.25)])
    saved = downstream_saved(results([(100, 0.2), (200, 0.3), (300, 0.35)]), baseline)
    # scratch's final 0.25 is reached halfway between step 100 (0.2) and 200 (0.3): step 150 of 300
    assert saved["reached_at_step"] == pytest.approx(150) and saved["steps_fraction"] == pytest.approx(0.5)
    assert saved["baseline_final_accuracy"] == 0.25 and saved["ki"]["200"] == {"mean": 0.3, "std": 0.01}
    assert saved["reached_by_first"] is False
    early = downstream_saved(results([(100, 0.3), (300, 0.35)]), baseline)  # reached at or before step 100
    assert early["reached_at_step"] == 100 and early["reached_by_first"] is True
    never = downstream_saved(results([(100, 0.2), (300, 0.24)]), baseline)
    assert never["reached_at_step"] is None and never["steps_fraction"] is None


def test_compute_saved_never_reached_is_none_not_a_number():
    baseline = curve([(0, 9.0), (100, 5.0)])
    ki = curve([(0, 9.0), (100, 5.2)])
    result = compute_saved(ki, baseline, teacher_loss=None)
    assert result["steps_fraction"] is None and result["flops_fraction"] is None and result["time_fraction"] is None
    assert result["ki_beats_baseline"] is False
    assert crossing(ki, 5.0) is None
    assert summarise([None, 0.5, 0.7]) == pytest.approx({"mean": 0.6, "std": 0.1414213, "min": 0.5, "max": 0.7,
                                                         "reached": 2, "runs": 3}, rel=1e-5)


def test_miniature_experiment_end_to_end_and_skip(tmp_path, capsys):
    config = {
        "name": "mini", "output_dir": str(tmp_path / "out"),
        "tokenizer": {"corpus": "wiki", "vocab_size": 400},
        "corpora": {"wiki": {"source": "wikipedia", "validation_fraction": 0.1, "max_documents": 20},
                    "plays": {"source": "shakespeare", "validation_fraction": 0.2, "max_documents": 5}},
        "defaults": {"block_size": 32, "per_device_train_batch_size": 8, "eval_steps": 10, "logging_steps": 5,
                     "save_steps": 10, "corpus": "wiki", "evaluate": ["wiki"],
                     "training_args": {"report_to": "none", "disable_tqdm": True}},
        "runs": [{"name": "teacher", "model": "llama-1x64", "max_steps": 30},
                 {"name": "scratch", "model": "llama-2x64", "max_steps": 20},
                 {"name": "ki", "model": "llama-2x64", "max_steps": 20, "teachers": ["teacher"],
                  "baseline": "scratch", "inherit": {"inherit_steps": 10, "temperature": 1.0},
                  "evaluate": ["wiki", "plays"], "finetune": [str(tmp_path / "task.jsonl")]},
                 {"name": "ki-cached", "model": "llama-2x64", "max_steps": 20, "teachers": ["teacher"],
                  "baseline": "scratch", "cache": {"top_k": 8, "blocks_per_shard": 64},
                  "inherit": {"inherit_steps": 10, "temperature": 1.0, "top_k": 4, "top_k_mode": "renormalize"}}],
        "finetune_options": {"seeds": [0, 1], "learning_rates": [1e-3], "epochs": 1, "max_length": 16}}
    rows = [{"text": f"{word} {i}", "label": word} for i in range(40) for word in ("alpha", "beta")]
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(config))
    root = tmp_path / "out"
    out = root / "reports" / "mini"
    run_experiment(path, finetune=False)  # losses first: every run trained and scored, nothing fine-tuned
    assert json.loads((out / "report.json").read_text())["finetune"] == {}
    assert not (root / "runs" / "ki" / "finetune.json").exists() and "accuracy" not in capsys.readouterr().out
    report = run_experiment(path)  # adds the fine-tuning: nothing is trained again
    log = capsys.readouterr().out
    assert log.count("done, skipped") == 4 and "fine-tuning 1 runs" in log and "accuracy" in log
    saved = json.loads((out / "report.json").read_text())
    entry = saved["compute_saved"]["ki"]
    for key in ("steps_fraction", "flops_fraction", "time_fraction", "baseline_final_val_loss", "ki_final_val_loss",
                "teacher_val_loss", "ki_val_loss_at_equal_steps"):
        assert key in entry
    assert entry["inheritance_end_step"] == 10 and entry["val_loss_at_inheritance_end"] is not None
    assert report["headline"].startswith("KI (ki)")
    assert (out / "validation_loss.png").stat().st_size > 10_000 and (out / "report.md").exists()
    assert (out / "summary.png").stat().st_size > 10_000  # three students: the summary plot too
    # evaluate: each run on its listed corpora; its own corpus gives back its final eval_loss
    assert set(saved["evaluation"]) == {"teacher", "scratch", "ki", "ki-cached"} and set(saved["evaluation"]["ki"]) == {
        "wiki", "plays"}
    assert saved["evaluation"]["teacher"]["wiki"] == pytest.approx(saved["final_val_loss"]["teacher"], abs=1e-9)
    assert "## Validation loss on each corpus" in (out / "report.md").read_text()
    assert (out / "evaluation.png").stat().st_size > 5_000 and "evaluation.png" in saved["plots"]
    # finetune: the run's downstream accuracy over the seeds, in the report's table and plot
    result = saved["finetune"]["task.jsonl"]["ki"]
    assert len(result["accuracy"]["values"]) == 2 and 0.0 <= result["accuracy"]["mean"] <= 1.0
    assert "## Downstream" in (out / "report.md").read_text() and (out / "finetune.png").stat().st_size > 5_000
    capsys.readouterr()
    # the cached run read its teacher from a top-8 cache the runner built once, cut to top-4 renormalised
    caches = [p for p in (root / "caches").iterdir() if not p.name.startswith(".")]  # not the build locks
    assert len(caches) == 1 and caches[0].name.startswith("teacher-top8-")
    cached = json.loads((root / "runs" / "ki-cached" / "run.json").read_text())
    assert cached["inherit"]["teacher_cache"] == str(caches[0]) and cached["inherit"]["top_k_mode"] == "renormalize"
    run_experiment(path)  # everything done: skipped, report rebuilt
    assert capsys.readouterr().out.count("done, skipped") == 4
    # an interrupted run (no run.json) resumes from its checkpoint
    finished = json.loads((root / "runs" / "ki" / "run.json").read_text())
    (root / "runs" / "ki" / "run.json").unlink()
    run_experiment(path)
    log = capsys.readouterr().out
    assert "resuming checkpoint-20" in log and log.count("done, skipped") == 3
    # resumed from its last checkpoint, the run takes no step beyond max_steps: the same model and counters
    again = json.loads((root / "runs" / "ki" / "run.json").read_text())
    assert again["steps"] == 20 and again["final_val_loss"] == finished["final_val_loss"]
    assert again["train_flops"] == finished["train_flops"]
    # another experiment in the same folder reuses the runs it shares (same name, same settings) and has its
    # own report; a shared name with other settings, another tokenizer or another corpus is refused
    other = {**config, "name": "other", "runs": config["runs"][:2]}
    path.write_text(yaml.safe_dump(other))
    capsys.readouterr()
    run_experiment(path)
    assert capsys.readouterr().out.count("done, skipped") == 2
    assert json.loads((root / "reports" / "other" / "report.json").read_text())["experiment"] == "other"
    assert (out / "report.md").exists()
    for change, message in [(("runs", 1, "max_steps", 25), "made with other settings"),
                            (("tokenizer", "vocab_size", 128), "tokenizer"),
                            (("corpora", "plays", "max_documents", 6), "corpus 'plays'")]:
        changed = copy.deepcopy(other)
        *keys, last, value = change
        target = changed
        for key in keys:
            target = target[key]
        target[last] = value
        path.write_text(yaml.safe_dump(changed))
        with pytest.raises(KinheritError, match=message):
            run_experiment(path)


def test_finetune_steps_keep_checkpoints_and_report_downstream_compute_saved(tmp_path, capsys):
    """`finetune_steps:` keeps the checkpoints at those steps (training unchanged, bit for bit), fine-tunes each, and
    the report says at which step the KI run's accuracy reaches its baseline's final accuracy."""
    student = {"model": "llama-1x64", "max_steps": 8, "finetune": [str(tmp_path / "task.jsonl")],
               "finetune_steps": [4, 8]}
    config = {
        "name": "along", "output_dir": str(tmp_path / "out"), "tokenizer": {"corpus": "wiki", "vocab_size": 300},
        "corpora": {"wiki": {"source": "wikipedia", "validation_fraction": 0.1, "max_documents": 10}},
        "defaults": {"block_size": 32, "per_device_train_batch_size": 4, "eval_steps": 4, "logging_steps": 2,
                     "save_steps": 100, "training_args": {"report_to": "none", "disable_tqdm": True}},
        "runs": [{"name": "teacher", "model": "llama-1x64", "max_steps": 6},
                 {"name": "scratch", **student},
                 {"name": "ki", **student, "teachers": ["teacher"], "baseline": "scratch",
                  "inherit": {"inherit_steps": 8}},
                 {"name": "plain", "model": "llama-1x64", "max_steps": 8}],  # scratch without kept checkpoints
        "finetune_options": {"seeds": [0, 1], "learning_rates": [1e-3], "epochs": 1, "max_length": 16}}
    rows = [{"text": f"{word} {i}", "label": word} for i in range(30) for word in ("alpha", "beta")]
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "along.yaml"
    path.write_text(yaml.safe_dump(config))
    runs = tmp_path / "out" / "runs"
    report = run_experiment(path)
    assert re.search(r"scratch at step 4 on \S*task.jsonl: accuracy", capsys.readouterr().out)
    assert [p.name for p in runs.glob("plain/checkpoint-*")] == ["checkpoint-8"]  # save_total_limit 1
    for name in ("scratch", "ki"):  # the kept step survives it too; the final step is fine-tuned as the final model
        assert sorted(p.name for p in runs.glob(f"{name}/checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
        along = read_results(runs / name / "finetune_steps.json", "along")["task.jsonl"]
        assert sorted(along) == ["4", "8"] and along["8"] == read_results(runs / name / "finetune.json", "along")[
            "task.jsonl"]
    logged = [json.loads(line) for line in (runs / "scratch" / "log.jsonl").read_text().splitlines()]
    plain = [json.loads(line) for line in (runs / "plain" / "log.jsonl").read_text().splitlines()]
    losses = [(r["step"], r.get("loss"), r.get("eval_loss")) for r in logged if "loss" in r or "eval_loss" in r]
    assert losses == [(r["step"], r.get("loss"), r.get("eval_loss")) for r in plain if "loss" in r or "eval_loss" in r]
    d = report["downstream_saved"]["ki"]["task.jsonl"]
    assert d["baseline"] == "scratch" and sorted(d["ki"]) == sorted(d["baseline_curve"]) == ["4", "8"]
    assert d["baseline_final_accuracy"] == pytest.approx(
        read_results(runs / "scratch" / "finetune.json", "along")["task.jsonl"]["accuracy"]["mean"])
    out = tmp_path / "out" / "reports" / "along"
    assert "## Downstream compute saved" in (out / "report.md").read_text()
    # the report keeps each run's training log and summary, so numbers read from them stay traceable
    assert (out / "runs" / "ki" / "log.jsonl").read_text() == (runs / "ki" / "log.jsonl").read_text()
    assert json.loads((out / "runs" / "ki" / "run.json").read_text())["steps"] == 8
    assert (out / "finetune_steps.png").stat().st_size > 5_000
    # another experiment fine-tuning the same runs on the same task with other options keeps its results apart
    path.write_text(yaml.safe_dump({**config, "name": "along-one-seed",
                                    "finetune_options": {**config["finetune_options"], "seeds": [0]}}))
    one_seed = run_experiment(path)
    assert len(one_seed["downstream_saved"]["ki"]["task.jsonl"]["ki"]) == 2
    assert len(one_seed["finetune"]["task.jsonl"]["ki"]["accuracy"]["values"]) == 1
    assert len(write_report(tmp_path / "out", "along")["finetune"]["task.jsonl"]["ki"]["accuracy"]["values"]) == 2
    # a run trained elsewhere without keeping its checkpoints is named, with the way out
    config["runs"][3] = {"name": "plain", **student}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(KinheritError, match="run 'plain' has no checkpoint at step 4 to fine-tune"):
        run_experiment(path)


def test_shipped_configs_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.rglob("*.yaml"))
    assert files
    for file in files:
        load_experiment(file)


def test_start_continues_another_runs_model_seed_by_seed(tmp_path):
    data = {"name": "x", "corpora": {"wiki": {"source": "wikipedia"}, "code": {"source": "python-code"}},
            "runs": [{"name": "general", "model": "llama-2x64", "seeds": [0, 1]},
                     {"name": "adapted", "start": "general", "corpus": "code", "seeds": [0, 1], "max_steps": 5}]}
    experiment = parse_experiment(data, output_dir=str(tmp_path))
    assert experiment.order() == ["general-s0", "general-s1", "adapted-s0", "adapted-s1"]
    model, *_ = run_arguments(experiment, experiment.runs["adapted-s1"])
    assert model.model == str(tmp_path / "runs" / "general-s1")
    data["runs"][1]["model"] = "llama-2x64"
    with pytest.raises(KinheritError, match="excludes model and grow"):
        parse_experiment(data, output_dir=str(tmp_path))
    data["runs"][1].pop("model")
    data["runs"][1]["start"] = "missing"
    with pytest.raises(KinheritError, match="unknown run 'missing'"):
        parse_experiment(data, output_dir=str(tmp_path))


def test_report_curves_leave_out_teachers_and_the_runs_others_start_from():
    from kinherit.experiment.compute_saved import EvalPoint
    from kinherit.experiment.report import _students

    curve = [EvalPoint(step=0, loss=6.0, flops=0.0, seconds=0.0), EvalPoint(step=10, loss=5.0, flops=1.0, seconds=1.0)]
    runs = {"general": {"model": "llama-2x64"}, "teacher": {"model": "llama-1x64"},
            "adapted": {"model": "run:general"}, "ki": {"model": "run:general", "teachers": ["teacher"],
                                                        "baseline": "adapted"}}
    drawn = _students({name: curve for name in runs}, {"teacher": 5.0}, runs)
    assert list(drawn) == ["adapted", "ki"]  # the general model's pre-training has its own step axis


def test_analyses_share_their_runs_consistently():
    """configs/analyses/ share one output folder: a run name means one run (same settings) in every analysis,
    with one tokenizer and one definition per corpus name, so that each shared run is trained once."""
    from pathlib import Path

    from kinherit.experiment.spec import run_fingerprint

    files = sorted((Path(__file__).resolve().parents[1] / "configs" / "analyses").glob("*.yaml"))
    assert len(files) >= 4
    seen: dict[str, tuple[str, str]] = {}
    tokenizers, corpora = set(), {}
    for file in files:
        experiment = load_experiment(file)
        assert str(experiment.output_dir) == "runs/analyses"
        tokenizers.add(json.dumps(experiment.tokenizer, sort_keys=True))
        for name, spec in experiment.corpora.items():
            assert corpora.setdefault(name, spec) == spec, f"{file.name}: corpus {name} defined otherwise"
        for name, spec in experiment.runs.items():
            fingerprint = run_fingerprint(spec)
            first = seen.setdefault(name, (fingerprint, file.name))
            assert first[0] == fingerprint, f"run {name} differs between {first[1]} and {file.name}"
    assert len(tokenizers) == 1
    script = (files[0].parents[2] / "scripts" / "analyses.sh").read_text()
    order = script.split("ORDER=(")[1].split(")")[0].split()
    assert sorted(order) == sorted(file.stem for file in files)  # scripts/analyses.sh runs every analysis


def test_inherit_keys_reach_the_inheritance_arguments(tmp_path):
    inherit = {"inherit_schedule": "cosine", "inherit_steps": 30, "inherit_start": 0.8, "temperature": 1.5,
               "divergence": "jsd",
               "jsd_beta": 0.3, "chunk_size": 64, "teacher_dtype": "float32", "loss_kernels": "eager"}
    runs = [{"name": "teacher", "model": "llama-2x64"},
            {"name": "ki", "model": "llama-2x128", "teachers": ["teacher"], "inherit": inherit}]
    experiment = parse_experiment(with_runs(runs), output_dir=str(tmp_path))
    _model, _data, args, _training = run_arguments(experiment, experiment.runs["ki"])
    assert (args.inherit_schedule, args.inherit_steps, args.inherit_start) == ("cosine", 30, 0.8)
    assert (args.temperature, args.divergence, args.jsd_beta, args.chunk_size) == (1.5, "jsd", 0.3, 64)
    assert (args.teacher_dtype, args.loss_kernels) == ("float32", "eager")
    retired = with_runs([runs[0], {**runs[1], "inherit": {"compile_loss": False}}])
    with pytest.raises(KinheritError, match="'compile_loss' is now loss_kernels"):
        parse_experiment(retired, output_dir=str(tmp_path))
    assert args.teacher == [str(tmp_path / "runs" / "teacher")]
    # keys left out keep the dataclass defaults
    plain = parse_experiment(with_runs([runs[0], {**runs[1], "inherit": {"inherit_steps": 5}}]),
                             output_dir=str(tmp_path))
    defaults = run_arguments(plain, plain.runs["ki"])[2]
    assert (defaults.temperature, defaults.loss_kernels, defaults.inherit_schedule) == (2.0, "auto", "linear")


def test_a_shared_run_is_trained_by_one_process_at_a_time(tmp_path, capsys):
    # a second experiment reaching a run that another one is training waits for it (then finds it done)
    order = []

    def second():
        with run_lock(tmp_path, "teacher"):
            order.append("second")

    with run_lock(tmp_path, "teacher"):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()
        order.append("first")
    thread.join(10)
    assert order == ["first", "second"]
    assert "waiting for run 'teacher': another process is training it" in capsys.readouterr().out
    with run_lock(tmp_path, "other"), run_lock(tmp_path, "teacher"):  # other runs are not held up
        pass
