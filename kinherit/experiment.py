"""`kinherit experiment FILE.yaml`: a whole KI experiment from one YAML file.

The file names a tokenizer, the corpora and a list of runs; runs name their teachers (other runs) and
their self-learning baseline. Runs execute in dependency order, each in `OUTPUT/runs/NAME/`; a run
whose `run.json` exists is done and skipped, a run with a checkpoint resumes from it, and the report
is written at the end to `OUTPUT/reports/EXPERIMENT/`. Several experiments may share one output folder
(with one tokenizer): a run of the same name is the same run, trained once, and its settings must agree.
A run with `seeds: [...]` is repeated once per seed (`NAME-s0`, ...); its teachers and baseline are
matched seed for seed when they are repeated too. Runs given the same `group:` (for example `ki-s1`
with `seed: 1` beside `ki`) are summarised together in the report as seeds of one arm.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from kinherit.atomic import write_json_atomic
from kinherit.data.tasks import BUILTIN_TASKS
from kinherit.errors import KinheritError
from kinherit.lm import perplexity
from kinherit.locks import exclusive
from kinherit.names import check_name
from kinherit.options import (
    CORPUS_OPTIONS,
    PRETRAIN_CLASSES,
    CacheArguments,
    EvaluateArguments,
    FinetuneArguments,
    InheritanceArguments,
    KinheritTrainingArguments,
    command_line,
    parse_arguments,
)
from kinherit.sealed import last_good_checkpoint

logger = logging.getLogger(__name__)
GROWN = "grown"  # the folder of a run's grown initial model
START = "run:"  # a run's model when it starts from another run (`start:`): that run's final checkpoint
LAUNCH_FILE = "launch.json"  # a run's `kinherit pretrain` arguments when it runs under a launcher

TOP_KEYS = {"name", "output_dir", "seed", "tokenizer", "corpora", "defaults", "runs", "description", "launcher",
            "finetune_options"}
TOKENIZER_KEYS = {"corpus", "vocab_size", "path"}
CORPUS_KEYS = {"source", "domain", "hf_config", "hf_split", *CORPUS_OPTIONS}
# A run's own keys: what the runner resolves (teachers are run names, corpus names the experiment's corpora).
RUN_KEYS = {"name", "teachers", "routing", "baseline", "grow", "start", "seeds", "seed", "group", "corpus",
            "description", "evaluate", "finetune", "cache"}
CACHES = "caches"  # OUTPUT/caches/KEY: teacher caches the runner built for runs with `cache:`
# `cache:` options of a run: `kinherit cache-teacher`'s, less those the runner sets (where, and the masking seed)
CACHE_KEYS = {f.name for f in fields(CacheArguments)} - {"output", "seed"}
EVALUATION = "evaluation.json"  # a run's losses on the corpora its `evaluate:` lists
FINETUNING = "finetune.json"  # a run's downstream results on the tasks its `finetune:` lists
MANIFESTS = "experiments"  # OUTPUT/experiments/NAME.json: each experiment that uses the folder
REPORTS = "reports"  # OUTPUT/reports/NAME/: each experiment's report
# Optional groups of `kinherit pretrain` options, for readability; their keys are the options' own names.
GROUPS = {"inherit": (InheritanceArguments,), "training_args": (KinheritTrainingArguments,)}
# Options the runner sets for every run itself.
RESERVED = {"output_dir", "teacher", "tokenizer", "cache_dir", "seed", "data_seed", "resume_from_checkpoint",
            *CORPUS_OPTIONS}
# Keys of earlier versions of the YAML, and the option each became.
RENAMED = {"batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
           "warmup": "warmup_steps", "lr_scheduler": "lr_scheduler_type", "schedule": "inherit_schedule",
           "steps": "inherit_steps", "start": "inherit_start", "value": "inherit_value",
           "time_constant": "inherit_time_constant", "margin": "inherit_margin"}
# Where the runner's own choices differ from `kinherit pretrain`'s: a learning curve starts at step 0.
RUNNER_DEFAULTS = {"eval_on_start": True}


def _option_names(classes: tuple) -> set[str]:
    return {f.name for cls in classes for f in fields(cls) if f.init}


OPTIONS = _option_names(PRETRAIN_CLASSES) - RESERVED


def _check_keys(where: str, data: Any, valid: set[str], described: str | None = None) -> None:
    """Refuse keys outside `valid`, naming the new name of a renamed key; `described` stands for long lists."""
    if not isinstance(data, dict):
        raise KinheritError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - valid, key=str)
    if unknown:
        renamed = [f"{key!r} is now {RENAMED[key]!r}" for key in unknown if key in RENAMED]
        reserved = [f"{key!r} is set by the experiment itself" for key in unknown if key in RESERVED]
        hint = "; ".join(renamed + reserved) or f"valid keys: {described or sorted(valid)}"
        raise KinheritError(f"unknown key(s) {unknown} in {where}; {hint}")


def _check_string(where: str, key: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise KinheritError(f"{where}: {key} must be a non-empty string, got {value!r}")


def _is_int(value: Any) -> bool:
    """An integer as YAML reads one (`true` is a bool, not 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def flatten_options(where: str, data: dict[str, Any], own: set[str]) -> dict[str, Any]:
    """A run's (or the defaults') `kinherit pretrain` options, with the `inherit:` and `training_args:` groups
    merged in; `own` are the keys the mapping may hold besides options."""
    _check_keys(where, data, own | OPTIONS | set(GROUPS),
                f"{', '.join(sorted(own | set(GROUPS)))} and the options of `kinherit pretrain --help`")
    flat = {key: value for key, value in data.items() if key not in GROUPS}
    for group, classes in GROUPS.items():
        if group not in data:
            continue
        _check_keys(f"{where} {group}", data[group], _option_names(classes) - RESERVED,
                    f"the {classes[0].__name__} options of `kinherit pretrain --help`")
        twice = sorted(set(data[group]) & set(flat))
        if twice:
            raise KinheritError(f"{where}: {twice} given both in {group}: and outside it; give each once")
        flat.update(data[group])
    return flat


@dataclass
class RunSpec:
    """One resolved run: its name, settings, teachers (run names) and baseline."""

    name: str
    settings: dict[str, Any]
    teachers: list[str] = field(default_factory=list)
    routing: dict[str, str] = field(default_factory=dict)
    baseline: str | None = None
    group: str | None = None
    seed: int = 0
    grow: str | None = None
    start: str | None = None  # continue training from this run's final model (post-training, domain adaptation)
    evaluate: list[str] = field(default_factory=list)  # corpora to score the finished run on
    finetune: list[str] = field(default_factory=list)  # tasks to fine-tune the finished run on
    cache: dict[str, Any] | None = None  # read the teachers from a cache built with these options

    def teacher_runs(self) -> list[str]:
        """The runs this one inherits from."""
        return list(self.routing.values()) or list(self.teachers)

    def dependencies(self) -> list[str]:
        """Runs that must finish before this one (its teachers, and the run it is grown or started from)."""
        sources = [run for run in (self.grow, self.start) if run and run not in self.teacher_runs()]
        return self.teacher_runs() + sources


@dataclass
class Experiment:
    """A parsed, validated experiment."""

    name: str
    output_dir: Path
    tokenizer: dict[str, Any]
    corpora: dict[str, dict[str, Any]]
    runs: dict[str, RunSpec]
    description: str = ""
    launcher: str | dict[str, Any] | None = None
    finetune_options: dict[str, Any] = field(default_factory=dict)  # `kinherit finetune` options for every run

    def launch_command(self, arguments_file: Path) -> list[str] | None:
        """The command that runs one run's `kinherit pretrain ARGS.json` under the launcher (None: in-process).

        A string launcher is a command prefix (`torchrun --nproc_per_node 4`, `accelerate launch
        --num_processes 4`, `srun torchrun ... --rdzv_endpoint $HEAD:29500`; environment variables are
        expanded); a mapping gives torchrun's options.
        """
        if self.launcher is None:
            return None
        if isinstance(self.launcher, str):
            prefix = shlex.split(os.path.expandvars(self.launcher))
        else:
            prefix = [sys.executable, "-m", "torch.distributed.run",
                      *[f"--{key}" if value is True else f"--{key}={value}" for key, value in self.launcher.items()]]
        return [*prefix, "-m", "kinherit", "pretrain", str(arguments_file)]

    def order(self, only: list[str] | None = None) -> list[str]:
        """Run names in dependency order (restricted to `only` and what they depend on)."""
        wanted = set(self.runs) if not only else set()
        for name in only or []:
            if name not in self.runs:
                raise KinheritError(f"--only names unknown run {name!r}; runs: {sorted(self.runs)}")
            wanted |= self._closure(name)
        ordered: list[str] = []
        for name in self.runs:
            self._visit(name, ordered, [])
        return [n for n in ordered if n in wanted]

    def _closure(self, name: str) -> set[str]:
        found = {name}
        for dep in self.runs[name].dependencies():
            found |= self._closure(dep)
        return found

    def _visit(self, name: str, ordered: list[str], stack: list[str]) -> None:
        if name in ordered:
            return
        if name in stack:
            cycle = " -> ".join([*stack[stack.index(name):], name])
            raise KinheritError(f"dependency cycle between runs: {cycle}; a run cannot (indirectly) teach itself")
        for dep in self.runs[name].dependencies():
            self._visit(dep, ordered, [*stack, name])
        ordered.append(name)


def _expand_seeds(raw_runs: list[dict[str, Any]], default_seed: int) -> list[dict[str, Any]]:
    seeded = {r["name"]: r["seeds"] for r in raw_runs if "seeds" in r}
    expanded = []
    for run in raw_runs:
        seeds = run.get("seeds")
        if seeds is None:
            expanded.append({**run, "_group": run.get("group", run["name"]), "seed": run.get("seed", default_seed)})
            continue
        for seed in seeds:
            copy_ = {k: v for k, v in run.items() if k != "seeds"}
            copy_["name"], copy_["seed"] = f"{run['name']}-s{seed}", seed
            copy_["_group"] = run.get("group", run["name"])

            def rename(ref: str, seed: int = seed, owner: str = run["name"]) -> str:
                if ref in seeded:
                    if seed not in seeded[ref]:
                        raise KinheritError(f"run {owner!r} with seed {seed} refers to {ref!r}, which has "
                                            f"no seed {seed}; give both the same seeds")
                    return f"{ref}-s{seed}"
                return ref

            if "teachers" in run:
                copy_["teachers"] = [rename(t) for t in run["teachers"]]
            if "routing" in run:
                copy_["routing"] = {d: rename(t) for d, t in run["routing"].items()}
            if "baseline" in run:
                copy_["baseline"] = rename(run["baseline"])
            for key in ("grow", "start"):
                if key in run:
                    copy_[key] = rename(run[key])
            expanded.append(copy_)
    return expanded


def _check_run(index: int, run: Any) -> dict[str, Any]:
    if not isinstance(run, dict):
        raise KinheritError(f"run #{index + 1} must be a mapping, got {type(run).__name__}")
    if not isinstance(run.get("name"), str) or not run["name"]:
        raise KinheritError(f"run #{index + 1} has no name (a non-empty string)")
    check_name(f"run #{index + 1}'s name", run["name"])
    where = f"run {run['name']!r}"
    run = flatten_options(where, run, RUN_KEYS)
    seeds = run.get("seeds", [0])  # checked here, so that a run's seeds are valid before others refer to them
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
        raise KinheritError(f"{where}: seeds must be a non-empty list of integers")
    if "seed" in run and not _is_int(run["seed"]):
        raise KinheritError(f"{where}: seed must be an integer, got {run['seed']!r}")
    if "start" in run and ("grow" in run or "model" in run):
        raise KinheritError(f"{where}: start continues another run's model, so it excludes model and grow")
    for key in ("baseline", "grow", "start", "group"):
        if key in run:
            check_name(f"{where}: {key}", run[key])
    teachers = run.get("teachers", [])
    if isinstance(teachers, str):
        teachers = [teachers]
    if not isinstance(teachers, list) or not all(isinstance(t, str) and t for t in teachers):
        raise KinheritError(f"{where}: teachers must be a run name or a list of run names, got {teachers!r}")
    run["teachers"] = teachers
    routing = run.get("routing", {})
    if not isinstance(routing, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in routing.items()):
        raise KinheritError(f"{where}: routing must map domain names to run names")
    for key in ("corpus", "evaluate", "finetune"):
        _check_names(where, key, run.get(key))
    if "cache" in run:
        _check_keys(f"{where} cache", run["cache"], CACHE_KEYS, "the options of `kinherit cache-teacher --help`")
        if not teachers and not routing:
            raise KinheritError(f"{where} has a cache but no teachers to cache")
        CacheArguments(**run["cache"])  # checked before anything runs
    return run


def _check_names(where: str, key: str, value: Any) -> None:
    """A corpus or task name, or a list of them (empty: none, overriding the defaults)."""
    if value is not None and not (isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(c, str) for c in value))):
        raise KinheritError(f"{where}: {key} must be a name or a list of names, got {value!r}")


def _names(value: str | list[str] | None) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def finetune_arguments(options: dict[str, Any], checkpoint: str, task: str, output_dir: str) -> Any:
    """The `kinherit finetune` options of one run and task, parsed as the command line is."""
    values = {**options, "checkpoint": checkpoint, "task": task, "output_dir": output_dir}
    (arguments,) = parse_arguments(command_line(values), (FinetuneArguments,), "kinherit finetune")
    return arguments


def _check_finetune_options(options: Any) -> dict[str, Any]:
    """`finetune_options:` maps `kinherit finetune` options (but the checkpoint, task and output folder) to values."""
    if not isinstance(options, dict):
        raise KinheritError(f"finetune_options must be a mapping of `kinherit finetune` options, got {options!r}")
    reserved = sorted(set(options) & {"checkpoint", "task", "output_dir"})
    if reserved:
        raise KinheritError(f"finetune_options {reserved} are set by the experiment itself")
    try:
        finetune_arguments(options, "checkpoint", "task", "finetune")
    except KinheritError as error:
        raise KinheritError(f"finetune_options: {error}") from error
    return options


def _check_launcher(launcher: Any) -> str | dict[str, Any] | None:
    """`launcher:` is a command prefix string or a mapping of torchrun options to values (true: a bare flag)."""
    if launcher is None or (isinstance(launcher, str) and launcher.strip()):
        return launcher
    if isinstance(launcher, dict) and launcher and all(
            isinstance(k, str) and (v is True or (isinstance(v, str | int | float) and not isinstance(v, bool)))
            for k, v in launcher.items()):
        return launcher
    raise KinheritError(f"launcher must be a command prefix such as 'torchrun --nproc_per_node 2' or a mapping of "
                        f"torchrun options such as {{nproc_per_node: 2, standalone: true}}, got {launcher!r}")


def parse_experiment(data: dict[str, Any], output_dir: str | None = None) -> Experiment:
    """Validate an experiment mapping (as loaded from YAML) into an `Experiment`; every run's options are
    parsed as `kinherit pretrain` parses them, so every value is checked before anything runs."""
    _check_keys("the experiment", data, TOP_KEYS)
    for key in ("name", "runs", "corpora"):
        if key not in data:
            raise KinheritError(f"the experiment has no {key!r}; it needs name, corpora and runs")
    for key in ("name", "output_dir", "description"):
        if key in data:
            _check_string("the experiment", key, data[key])
    check_name("the experiment's name", data["name"])
    if "seed" in data and not _is_int(data["seed"]):
        raise KinheritError(f"the experiment's seed must be an integer, got {data['seed']!r}")
    corpora = data["corpora"]
    if not isinstance(corpora, dict) or not corpora or not all(isinstance(k, str) for k in corpora):
        raise KinheritError("corpora must map corpus names to settings, e.g. {wiki: {source: wikipedia}}")
    for name, spec in corpora.items():
        _check_keys(f"corpus {name!r}", spec, CORPUS_KEYS)
        if "source" not in spec:
            raise KinheritError(f"corpus {name!r} has no 'source'")
        for key, value in spec.items():
            if key in ("source", "domain", "text_field", "hf_config", "hf_split"):
                _check_string(f"corpus {name!r}", key, value)
    tokenizer = data.get("tokenizer", {"corpus": next(iter(corpora)), "vocab_size": 8192})
    _check_keys("tokenizer", tokenizer, TOKENIZER_KEYS)
    for key in ("corpus", "path"):
        if key in tokenizer:
            _check_string("tokenizer", key, tokenizer[key])
    if "path" not in tokenizer and tokenizer.get("corpus", next(iter(corpora))) not in corpora:
        raise KinheritError(f"tokenizer corpus {tokenizer.get('corpus')!r} is not one of the corpora {sorted(corpora)}")
    vocab = tokenizer.get("vocab_size", 8192)
    if not _is_int(vocab) or vocab < 1:
        raise KinheritError(f"tokenizer vocab_size must be a positive integer, got {vocab!r}")
    defaults = flatten_options("defaults", data.get("defaults", {}), {"corpus", "evaluate", "finetune"})
    for key in ("corpus", "evaluate", "finetune"):
        _check_names("defaults", key, defaults.get(key))
    raw_runs = data["runs"]
    if not isinstance(raw_runs, list) or not raw_runs:
        raise KinheritError("runs must be a non-empty list")
    raw_runs = [_check_run(index, run) for index, run in enumerate(raw_runs)]
    names = [r["name"] for r in raw_runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise KinheritError(f"run names must be unique; repeated: {duplicates}")
    runs: dict[str, RunSpec] = {}
    for run in _expand_seeds(raw_runs, data.get("seed", 0)):
        settings = {**RUNNER_DEFAULTS, **copy.deepcopy(defaults),
                    **{k: v for k, v in run.items() if k in OPTIONS or k == "corpus"}}
        evaluate, finetune = (_names(run.get(key, settings.pop(key, None))) for key in ("evaluate", "finetune"))
        settings.setdefault("corpus", next(iter(corpora)))
        if "start" in run:
            settings["model"] = f"{START}{run['start']}"  # resolved to the run's folder in run_settings
        if "model" not in settings:
            raise KinheritError(f"run {run['name']!r} has no model (a preset, config.json or checkpoint)")
        corpus_names = _names(settings["corpus"])
        if not corpus_names:
            raise KinheritError(f"run {run['name']!r} has an empty corpus list; name one or more of the corpora "
                                f"{sorted(corpora)}, or leave corpus out to train on the first")
        for corpus in [*corpus_names, *evaluate]:
            if corpus not in corpora:
                raise KinheritError(f"run {run['name']!r} uses corpus {corpus!r}; defined corpora: {sorted(corpora)}")
        for task in finetune:
            if task not in BUILTIN_TASKS and not os.path.exists(task):
                raise KinheritError(f"run {run['name']!r} fine-tunes on {task!r}, which is neither a built-in task "
                                    f"({', '.join(BUILTIN_TASKS)}) nor a file")
        routing = run.get("routing", {})
        if run["teachers"] and routing:
            raise KinheritError(f"run {run['name']!r} has both teachers and routing; use one")
        runs[run["name"]] = RunSpec(name=run["name"], settings=settings, teachers=list(run["teachers"]),
                                    routing=dict(routing), baseline=run.get("baseline"), group=run["_group"],
                                    seed=run["seed"], grow=run.get("grow"), start=run.get("start"),
                                    evaluate=evaluate, finetune=finetune,
                                    cache=run.get("cache"))
    for spec in runs.values():
        for ref in [*spec.dependencies(), *([spec.baseline] if spec.baseline else [])]:
            if ref not in runs:
                raise KinheritError(f"run {spec.name!r} refers to unknown run {ref!r}; runs: {sorted(runs)}")
    experiment = Experiment(name=data["name"], output_dir=Path(output_dir or data.get("output_dir")
                                                               or f"runs/{data['name']}"),
                            tokenizer=tokenizer, corpora=corpora, runs=runs, description=data.get("description", ""),
                            launcher=_check_launcher(data.get("launcher")),
                            finetune_options=_check_finetune_options(data.get("finetune_options", {})))
    experiment.order()  # raises on cycles
    if experiment.launcher is None:  # a launched run checks its options where it runs (bf16 needs its GPUs)
        for spec in runs.values():
            run_arguments(experiment, spec)
    return experiment


def load_experiment(path: str | Path, output_dir: str | None = None) -> Experiment:
    """Read and validate an experiment YAML file."""
    path = Path(path)
    if not path.exists():
        raise KinheritError(f"experiment file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise KinheritError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise KinheritError(f"{path} must hold a mapping with name, corpora and runs")
    return parse_experiment(data, output_dir)


def _corpus_args(experiment: Experiment, names: list[str]) -> list[str]:
    sources = []
    for name in names:
        spec = experiment.corpora[name]
        domain = spec.get("domain", name)
        sources.append(f"{domain}={spec['source']}")
    return sources


def _first_corpus_setting(experiment: Experiment, names: list[str], key: str, default: Any) -> Any:
    values = {json.dumps(experiment.corpora[n].get(key, default)) for n in names}
    if len(values) > 1:
        raise KinheritError(f"corpora {names} used together must share {key!r}")
    return experiment.corpora[names[0]].get(key, default)


def run_settings(experiment: Experiment, spec: RunSpec) -> dict[str, Any]:
    """One run's `kinherit pretrain` options by name: its own, and those the runner sets (paths, seed, corpus)."""
    s = {k: v for k, v in spec.settings.items() if k != "corpus"}
    if spec.start:
        s["model"] = str(experiment.output_dir / "runs" / spec.start)
    run_dir = experiment.output_dir / "runs" / spec.name
    corpus_names = spec.settings["corpus"] if isinstance(spec.settings["corpus"], list) else [spec.settings["corpus"]]
    teacher_dirs = {name: str(experiment.output_dir / "runs" / name) for name in spec.teacher_runs()}
    if spec.routing:
        teachers = [f"{domain}={teacher_dirs[name]}" for domain, name in spec.routing.items()]
    else:
        teachers = [teacher_dirs[name] for name in spec.teachers]
    if spec.teacher_runs() and "teacher_cache" in s:
        raise KinheritError(f"run {spec.name!r} names teachers and a teacher_cache; use one")
    return {**s, "corpus": _corpus_args(experiment, corpus_names), "tokenizer": str(tokenizer_folder(experiment)),
            "cache_dir": str(experiment.output_dir / "cache"), "output_dir": str(run_dir), "teacher": teachers,
            "seed": spec.seed, "data_seed": spec.seed,
            **{key: _first_corpus_setting(experiment, corpus_names, key, None) for key in CORPUS_OPTIONS}}


def run_arguments(experiment: Experiment, spec: RunSpec, settings: dict[str, Any] | None = None) -> tuple:
    """The (model, data, inheritance, training) argument dataclasses of one run, parsed as the command line is."""
    try:
        return parse_arguments(command_line(settings or run_settings(experiment, spec)), PRETRAIN_CLASSES,
                               "kinherit pretrain")
    except KinheritError as error:
        raise KinheritError(f"run {spec.name!r}: {error}") from error


def run_fingerprint(spec: RunSpec, launcher: str | dict[str, Any] | None = None) -> str:
    """What identifies a run's result: its settings, teachers, seed (and launcher and growth source)."""
    identity = {"settings": spec.settings, "teachers": spec.teachers, "routing": spec.routing, "seed": spec.seed}
    if launcher is not None:  # the number of processes changes the global batch
        identity["launcher"] = launcher
    if spec.grow:
        identity["grow"] = spec.grow
    if spec.cache is not None:
        identity["cache"] = spec.cache
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def manifest_path(output_dir: Path, name: str) -> Path:
    """Where experiment `name` keeps its manifest in a shared output folder."""
    return output_dir / MANIFESTS / f"{name}.json"


def report_folder(output_dir: Path, name: str) -> Path:
    """Where experiment `name`'s report, report.json and plots go."""
    return output_dir / REPORTS / name


def adopt_legacy_manifest(folder: Path) -> None:
    """Move the single `experiment.json` of a folder made by an earlier version to `experiments/NAME.json`."""
    (folder / MANIFESTS).mkdir(parents=True, exist_ok=True)
    legacy = folder / "experiment.json"
    if legacy.exists():
        previous = json.loads(legacy.read_text(encoding="utf-8"))
        os.replace(legacy, manifest_path(folder, previous["name"]))


def prepare_output(experiment: Experiment) -> None:
    """Record this experiment in its output folder, which other experiments may share: runs of the same name
    are the same run (their settings are checked by fingerprint), so the tokenizer and the corpora of the same
    name must agree with those of every other experiment there."""
    folder = experiment.output_dir
    adopt_legacy_manifest(folder)
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
                   "evaluate": spec.evaluate, "finetune": spec.finetune}
            for name, spec in experiment.runs.items()}
    write_json_atomic(manifest_path(folder, experiment.name),
                      {"name": experiment.name, "description": experiment.description,
                       "tokenizer": experiment.tokenizer, "corpora": experiment.corpora, "runs": runs})


def tokenizer_folder(experiment: Experiment) -> Path:
    """Where the experiment's tokenizer is: the path given, or the one the experiment trains."""
    return Path(experiment.tokenizer.get("path", experiment.output_dir / "tokenizer"))


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
        corpus = load_corpus([CorpusSpec(**{k: v for k, v in spec.items()})])
        logger.info("training the experiment's tokenizer (%s tokens) on %s", settings.get("vocab_size", 8192),
                    corpus_name)
        train_tokenizer(corpus.train, int(settings.get("vocab_size", 8192)), target)
    return target


def grow_start(experiment: Experiment, spec: RunSpec, run_dir: Path) -> None:
    """Grow the run's initial model from its `grow:` run into `run_dir/grown` (once)."""
    from kinherit.grow import grow_checkpoint

    grown = run_dir / GROWN
    if not grown.exists():
        report = grow_checkpoint(str(experiment.output_dir / "runs" / spec.grow), spec.settings["model"], str(grown),
                                 seed=spec.seed)
        print(f"    grown from {spec.grow}: width x{report.width_factor}, depth {report.depth_method}; largest "
              f"logit difference {report.max_abs_logit_difference:.1e}", flush=True)


def cached_teachers(experiment: Experiment, spec: RunSpec, settings: dict[str, Any]) -> dict[str, Any]:
    """The run's settings reading its teachers from a cache (built once under OUTPUT/caches/ and shared by every
    run with the same teachers, data, temperature and cache options) instead of running them."""
    from kinherit.teacher_cache import build_cache

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
    from kinherit.evaluate import evaluate

    path = run_dir / EVALUATION
    done = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    for name in spec.evaluate:
        if name in done:
            continue
        corpus = experiment.corpora[name]
        options = EvaluateArguments(checkpoint=str(run_dir), corpus=_corpus_args(experiment, [name]),
                                    cache_dir=str(experiment.output_dir / "cache"),
                                    **{key: corpus[key] for key in CORPUS_OPTIONS if key in corpus})
        done[name] = evaluate(options)["rows"][0]
        write_json_atomic(path, done)
        print(f"    {spec.name} on {name}: loss {done[name]['loss']:.4f}", flush=True)


def finetune_run(experiment: Experiment, spec: RunSpec, run_dir: Path) -> None:
    """Fine-tune a finished run on the tasks its `finetune:` lists (results kept under OUTPUT/finetune, so a
    repeat reads them back)."""
    from kinherit.finetune import finetune

    path = run_dir / FINETUNING
    done = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    for task in spec.finetune:
        arguments = finetune_arguments(experiment.finetune_options, str(run_dir), task,
                                       str(experiment.output_dir / "finetune"))
        result = finetune(arguments)
        done[result["task"]] = {key: result[key] for key in ("accuracy", "macro_f1", "majority_test_accuracy",
                                                             "selected")}
        write_json_atomic(path, done)
        print(f"    {spec.name} on {task}: accuracy {result['accuracy']['mean']:.4f} +- "
              f"{result['accuracy']['std']:.4f} over {len(result['test'])} seeds", flush=True)


def run_lock(output_dir: Path, name: str) -> contextlib.AbstractContextManager[None]:
    """Hold run `name` of a shared output folder while training it (an exclusive lock on
    `OUTPUT/runs/.locks/NAME`): a second experiment that shares the run waits for it, then finds it done
    (or resumes what was interrupted), instead of training it at the same time into the same folder."""
    return exclusive(output_dir / "runs" / ".locks" / name,
                     waiting=f"    waiting for run {name!r}: another process is training it")


def train_run(experiment: Experiment, name: str, counter: str) -> Path:
    """Train one run of the experiment (resuming an interrupted one) unless it is done; returns its folder.
    `counter` ("[i/n]") prefixes its progress lines."""
    from kinherit.pretrain import RUN_MARKER, pretrain

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
    from kinherit.evaluation.report import write_report

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
    report = write_report(experiment.output_dir, experiment.name)
    print(report["headline"], flush=True)
    print(f"report: {report_folder(experiment.output_dir, experiment.name) / 'report.md'}", flush=True)
    return report
