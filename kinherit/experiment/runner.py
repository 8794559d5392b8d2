"""`kinherit experiment FILE.yaml`: run an experiment's runs in dependency order, each in `OUTPUT/runs/NAME/`.

A run whose `run.json` exists is done and skipped, a run with a checkpoint resumes from it, and the report
is written at the end to `OUTPUT/reports/EXPERIMENT/`. Several experiments may share one output folder
(with one tokenizer): a run of the same name is the same run, trained once, and its settings must agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shlex
import subprocess
from pathlib import Path
from typing import Any

from kinherit.core.atomic import write_json_atomic
from kinherit.core.errors import KinheritError
from kinherit.core.locks import exclusive
from kinherit.core.sealed import last_good_checkpoint
from kinherit.experiment.layout import (
    CACHES,
    EVALUATION,
    FINETUNING,
    FINETUNING_ALONG,
    GROWN,
    LAUNCH_FILE,
    MANIFESTS,
    check_current_layout,
    manifest_path,
    read_results,
    report_folder,
    write_results,
)
from kinherit.experiment.spec import (
    CACHE_KEYS,
    Experiment,
    RunSpec,
    corpus_args,
    finetune_arguments,
    load_experiment,
    run_arguments,
    run_fingerprint,
    run_settings,
    tokenizer_folder,
)
from kinherit.models.lm import perplexity
from kinherit.training.options import (
    CORPUS_OPTIONS,
    CacheArguments,
    EvaluateArguments,
)

logger = logging.getLogger(__name__)


def prepare_output(experiment: Experiment) -> None:
    """Record this experiment in its output folder, which other experiments may share: runs of the same name
    are the same run (their settings are checked by fingerprint), so the tokenizer and the corpora of the same
    name must agree with those of every other experiment there."""
    folder = experiment.output_dir
    check_current_layout(folder)
    (folder / MANIFESTS).mkdir(parents=True, exist_ok=True)
    for other in sorted((folder / MANIFESTS).glob("*.json")):
        previous = json.loads(other.read_text(encoding="utf-8"))
        if previous["name"] == experiment.name:
            continue
        if previous.get("tokenizer", experiment.tokenizer) != experiment.tokenizer:
            raise KinheritError(f"{folder} holds experiment {previous['name']!r}, whose tokenizer "
                                f"{previous['tokenizer']} differs from {experiment.tokenizer}; experiments share "
                                "an output_dir only with the same tokenizer: choose another output_dir")
        for corpus, spec in experiment.corpora.items():
            if previous.get("corpora", {}).get(corpus, spec) != spec:
                raise KinheritError(f"corpus {corpus!r} is {spec} here but {previous['corpora'][corpus]} in "
                                    f"experiment {previous['name']!r}, which shares {folder}; give this one "
                                    "another name")
    runs = {name: {"group": spec.group, "seed": spec.seed, "teachers": spec.teacher_runs(), "grow": spec.grow,
                   "baseline": spec.baseline, "model": spec.settings["model"],
                   "fingerprint": run_fingerprint(spec, experiment.launcher), "settings": spec.settings,
                   "evaluate": spec.evaluate, "finetune": spec.finetune, "finetune_steps": spec.finetune_steps}
            for name, spec in experiment.runs.items()}
    write_json_atomic(manifest_path(folder, experiment.name),
                      {"name": experiment.name, "description": experiment.description,
                       "tokenizer": experiment.tokenizer, "corpora": experiment.corpora, "runs": runs})


def ensure_tokenizer(experiment: Experiment) -> Path:
    """The experiment's tokenizer folder, training the BPE on the first time."""
    from kinherit.data import CorpusSpec, load_corpus, train_tokenizer

    settings = experiment.tokenizer
    target = tokenizer_folder(experiment)
    if "path" in settings:
        return target
    with exclusive(target, waiting="    waiting for the tokenizer: another process is training it"):
        if (target / "tokenizer.json").exists():
            return target
        corpus_name = settings.get("corpus", next(iter(experiment.corpora)))
        spec = experiment.corpora[corpus_name]
        corpus = load_corpus([CorpusSpec(**{k: v for k, v in spec.items()})], experiment.output_dir / "cache")
        logger.info("training the experiment's tokenizer (%s tokens) on %s", settings.get("vocab_size", 8192),
                    corpus_name)
        train_tokenizer(corpus.train, int(settings.get("vocab_size", 8192)), target)
    return target


def grow_start(experiment: Experiment, spec: RunSpec, run_dir: Path) -> None:
    """Grow the run's initial model from its `grow:` run into `run_dir/grown` (once)."""
    from kinherit.commands.grow import grow_checkpoint

    grown = run_dir / GROWN
    if not grown.exists():
        report = grow_checkpoint(str(experiment.output_dir / "runs" / spec.grow), spec.settings["model"], str(grown),
                                 seed=spec.seed)
        print(f"    grown from {spec.grow}: width x{report.width_factor}, depth {report.depth_method}; largest "
              f"logit difference {report.max_abs_logit_difference:.1e}", flush=True)


def cached_teachers(experiment: Experiment, spec: RunSpec, settings: dict[str, Any]) -> dict[str, Any]:
    """The run's settings reading its teachers from a cache (built once under OUTPUT/caches/ and shared by every
    run with the same teachers, data, temperature and cache options) instead of running them."""
    from kinherit.training.teacher_cache import build_cache

    _model, data, inherit, _training = run_arguments(experiment, spec, settings)
    options = CacheArguments(**{**spec.cache, "seed": spec.seed, "output": ""})
    identity = {"teachers": inherit.teacher, "weights": inherit.teacher_weights, "temperature": inherit.temperature,
                "data": {key: getattr(data, key) for key in ("corpus", "block_size", "mlm_probability", "tokenizer",
                                                             "corpus_weights", *CORPUS_OPTIONS)},
                "cache": {key: getattr(options, key) for key in sorted(CACHE_KEYS | {"seed"})}}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = experiment.output_dir / CACHES / f"{'+'.join(spec.teacher_runs())}-top{options.top_k}-{key}"
    if not path.exists():
        print(f"    caching {', '.join(spec.teacher_runs())} (top-{options.top_k}) in {path}", flush=True)
        options.output = str(path)
        build_cache(data, inherit, options, reuse=True)
    return {**settings, "teacher": [], "teacher_cache": str(path)}


def evaluate_run(experiment: Experiment, spec: RunSpec, run_dir: Path) -> None:
    """Score a finished run on the corpora its `evaluate:` lists (once each: kept in evaluation.json)."""
    from kinherit.commands.evaluate import evaluate

    path = run_dir / EVALUATION
    done = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    for name in spec.evaluate:
        if name in done:
            continue
        corpus = experiment.corpora[name]
        options = EvaluateArguments(checkpoint=str(run_dir), corpus=corpus_args(experiment, [name]),
                                    cache_dir=str(experiment.output_dir / "cache"),
                                    **{key: corpus[key] for key in CORPUS_OPTIONS if key in corpus})
        done[name] = evaluate(options)["rows"][0]
        write_json_atomic(path, done)
        print(f"    {spec.name} on {name}: loss {done[name]['loss']:.4f}", flush=True)


def _finetuned(experiment: Experiment, checkpoint: Path, task: str) -> dict[str, Any]:
    """`kinherit finetune` of one checkpoint on one task with the experiment's options (kept under OUTPUT/finetune,
    so a repeat reads it back): the result's name and what the report shows of it."""
    from kinherit.commands.finetune import finetune

    result = finetune(finetune_arguments(experiment.finetune_options, str(checkpoint), task,
                                         str(experiment.output_dir / "finetune")))
    return {"task": result["task"], "seeds": len(result["test"]),
            **{key: result[key] for key in ("accuracy", "macro_f1", "majority_test_accuracy", "selected")}}


def finetune_run(experiment: Experiment, spec: RunSpec, run_dir: Path) -> None:
    """Fine-tune a finished run on the tasks its `finetune:` lists, kept in its finetune.json as this experiment's."""
    path = run_dir / FINETUNING
    done = read_results(path, experiment.name)
    for task in spec.finetune:
        result = _finetuned(experiment, run_dir, task)
        done[result.pop("task")] = result
        write_results(path, experiment.name, done)
        print(f"    {spec.name} on {task}: accuracy {result['accuracy']['mean']:.4f} +- "
              f"{result['accuracy']['std']:.4f} over {result['seeds']} seeds", flush=True)


def finetune_along(experiment: Experiment, spec: RunSpec, run_dir: Path) -> None:
    """Fine-tune the run's checkpoints at the steps its `finetune_steps:` lists on its `finetune:` tasks (the last
    step is the final model), kept in its finetune_steps.json as this experiment's {task: {step: result}}."""
    from kinherit.commands.pretrain import RUN_MARKER

    final_step = json.loads((run_dir / RUN_MARKER).read_text(encoding="utf-8"))["steps"]
    path = run_dir / FINETUNING_ALONG
    done = read_results(path, experiment.name)
    for step in spec.finetune_steps:
        checkpoint = run_dir if step == final_step else run_dir / f"checkpoint-{step}"
        if not checkpoint.is_dir():
            raise KinheritError(f"run {spec.name!r} has no checkpoint at step {step} to fine-tune ({checkpoint}): it "
                                "was trained without keeping it (finetune_steps keeps the checkpoints of a run "
                                f"trained with it); delete {run_dir} to train it again, or drop that step")
        for task in spec.finetune:
            result = _finetuned(experiment, checkpoint, task)
            done.setdefault(result.pop("task"), {})[str(step)] = result
            write_results(path, experiment.name, done)
            print(f"    {spec.name} at step {step} on {task}: accuracy {result['accuracy']['mean']:.4f} +- "
                  f"{result['accuracy']['std']:.4f}", flush=True)


def run_lock(output_dir: Path, name: str) -> contextlib.AbstractContextManager[None]:
    """Hold run `name` of a shared output folder while training it (an exclusive lock on
    `OUTPUT/runs/.locks/NAME`): a second experiment that shares the run waits for it, then finds it done
    (or resumes what was interrupted), instead of training it at the same time into the same folder."""
    return exclusive(output_dir / "runs" / ".locks" / name,
                     waiting=f"    waiting for run {name!r}: another process is training it")


def train_run(experiment: Experiment, name: str, counter: str) -> Path:
    """Train one run of the experiment (resuming an interrupted one) unless it is done; returns its folder.
    `counter` ("[i/n]") prefixes its progress lines."""
    from kinherit.commands.pretrain import RUN_MARKER, pretrain

    spec = experiment.runs[name]
    run_dir = experiment.output_dir / "runs" / name
    fingerprint_file = run_dir / "spec.json"
    fingerprint = run_fingerprint(spec, experiment.launcher)
    if fingerprint_file.exists() and json.loads(fingerprint_file.read_text())["fingerprint"] != fingerprint:
        raise KinheritError(f"run {name!r} in {run_dir} was made with other settings than the YAML now gives; "
                            "delete that folder to redo it, or give the changed run a new name")
    if (run_dir / RUN_MARKER).exists():
        print(f"{counter} {name}: done, skipped", flush=True)
        return run_dir
    settings = run_settings(experiment, spec)
    last = last_good_checkpoint(run_dir)
    settings["resume_from_checkpoint"] = last
    if spec.grow:
        settings["model"] = str(run_dir / GROWN)
    if spec.cache is not None:
        settings = cached_teachers(experiment, spec, settings)
    arguments = run_arguments(experiment, spec, settings)  # every value is checked before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(fingerprint_file, {"fingerprint": fingerprint})
    if spec.grow:
        grow_start(experiment, spec, run_dir)
    teachers = f" inheriting from {', '.join(spec.teacher_runs())}" if spec.teacher_runs() else ""
    teachers += f", grown from {spec.grow}" if spec.grow else ""
    resumed = f", resuming {Path(last).name}" if last else ""
    print(f"{counter} {name}: {spec.settings['model']}, {arguments[3].max_steps} steps"
          f"{teachers}{resumed}", flush=True)
    arguments_file = run_dir / LAUNCH_FILE
    command = experiment.launch_command(arguments_file)
    if command is None:
        summary = pretrain(*arguments)
    else:
        write_json_atomic(arguments_file, settings)
        print(f"    {shlex.join(command)}", flush=True)
        if subprocess.run(command).returncode != 0:
            raise KinheritError(f"run {name!r} failed under the launcher (see its output above); re-run the "
                                "experiment to resume it from its last checkpoint")
        summary = json.loads((run_dir / RUN_MARKER).read_text())
    loss = summary["final_val_loss"]
    evaluated = f"validation loss {loss:.4f} (ppl {perplexity(loss):.1f})" if loss is not None else "trained"
    print(f"{counter} {name}: {evaluated} in {summary['train_seconds']:.0f} s", flush=True)
    return run_dir


def run_experiment(path: str | Path, output_dir: str | None = None, only: list[str] | None = None,
                   finetune: bool = True) -> dict[str, Any]:
    """Run every unfinished run of the experiment in dependency order and score it on its `evaluate:` corpora,
    write the report, then fine-tune the runs on their `finetune:` tasks (the slow part, last, so that every
    loss is in a report first) and write it again. `finetune=False` stops before the fine-tuning."""
    from kinherit.experiment.report import write_report

    experiment = load_experiment(path, output_dir)
    prepare_output(experiment)
    ensure_tokenizer(experiment)
    order = experiment.order(only)
    for position, name in enumerate(order, start=1):
        with run_lock(experiment.output_dir, name):
            run_dir = train_run(experiment, name, f"[{position}/{len(order)}]")
            evaluate_run(experiment, experiment.runs[name], run_dir)
    tuned = [name for name in order if experiment.runs[name].finetune] if finetune else []
    if tuned:
        write_report(experiment.output_dir, experiment.name)
        print(f"losses reported; fine-tuning {len(tuned)} runs", flush=True)
    for name in tuned:
        with run_lock(experiment.output_dir, name):
            finetune_run(experiment, experiment.runs[name], experiment.output_dir / "runs" / name)
            finetune_along(experiment, experiment.runs[name], experiment.output_dir / "runs" / name)
    report = write_report(experiment.output_dir, experiment.name)
    print(report["headline"], flush=True)
    print(f"report: {report_folder(experiment.output_dir, experiment.name) / 'report.md'}", flush=True)
    return report
