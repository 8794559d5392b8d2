"""The experiment YAML: its keys, their checks, and each run's `kinherit pretrain` options.

The file names a tokenizer, the corpora and a list of runs; runs name their teachers (other runs) and
their self-learning baseline. A run with `seeds: [...]` is repeated once per seed (`NAME-s0`, ...); its
teachers and baseline are matched seed for seed when they are repeated too. Runs given the same `group:`
(for example `ki-s1` with `seed: 1` beside `ki`) are summarised together in the report as seeds of one arm.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from kinherit.core.errors import KinheritError
from kinherit.core.names import check_name
from kinherit.data.tasks import BUILTIN_TASKS
from kinherit.experiment.layout import START
from kinherit.training.options import (
    CORPUS_OPTIONS,
    PRETRAIN_CLASSES,
    RETIRED,
    CacheArguments,
    FinetuneArguments,
    InheritanceArguments,
    KinheritTrainingArguments,
    command_line,
    parse_arguments,
)

TOP_KEYS = {"name", "output_dir", "seed", "tokenizer", "corpora", "defaults", "runs", "description", "launcher",
            "finetune_options"}


TOKENIZER_KEYS = {"corpus", "vocab_size", "path"}


CORPUS_KEYS = {"source", "domain", "hf_config", "hf_split", *CORPUS_OPTIONS}


# A run's own keys: what the runner resolves (teachers are run names, corpus names the experiment's corpora).
RUN_KEYS = {"name", "teachers", "routing", "baseline", "grow", "start", "seeds", "seed", "group", "corpus",
            "description", "evaluate", "finetune", "finetune_steps", "cache"}


# `cache:` options of a run: `kinherit cache-teacher`'s, less those the runner sets (where, and the masking seed)
CACHE_KEYS = {f.name for f in fields(CacheArguments)} - {"output", "seed"}


# Optional groups of `kinherit pretrain` options, for readability; their keys are the options' own names.
GROUPS = {"inherit": (InheritanceArguments,), "training_args": (KinheritTrainingArguments,)}


# Options the runner sets for every run itself.
RESERVED = {"output_dir", "teacher", "tokenizer", "cache_dir", "seed", "data_seed", "resume_from_checkpoint",
            *CORPUS_OPTIONS}


# Where the runner's own choices differ from `kinherit pretrain`'s: a learning curve starts at step 0.
RUNNER_DEFAULTS = {"eval_on_start": True}


def _option_names(classes: tuple) -> set[str]:
    return {f.name for cls in classes for f in fields(cls) if f.init}


OPTIONS = _option_names(PRETRAIN_CLASSES) - RESERVED


def _check_keys(where: str, data: Any, valid: set[str], described: str | None = None) -> None:
    """Refuse keys outside `valid`, saying which the experiment sets itself and what replaced a retired one;
    `described` stands for long lists."""
    if not isinstance(data, dict):
        raise KinheritError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - valid, key=str)
    if unknown:
        reserved = [f"{key!r} is set by the experiment itself" for key in unknown if key in RESERVED]
        retired = [f"{key!r} is now {RETIRED[key].removeprefix('--')}" for key in unknown if key in RETIRED]
        hint = "; ".join(reserved + retired) or f"valid keys: {described or sorted(valid)}"
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
    finetune_steps: list[int] = field(default_factory=list)  # ... and its checkpoints at these steps (kept for it)
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
    steps = run.get("finetune_steps", [])
    if not isinstance(steps, list) or not all(_is_int(step) and step > 0 for step in steps) or len(set(steps)) < len(
            steps):
        raise KinheritError(f"{where}: finetune_steps must be a list of distinct positive steps, got {steps!r}")
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
                                    finetune_steps=sorted(run.get("finetune_steps", [])), cache=run.get("cache"))
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
            _check_finetune_steps(spec, run_arguments(experiment, spec)[3].max_steps)
    return experiment


def _check_finetune_steps(spec: RunSpec, max_steps: int) -> None:
    """`finetune_steps:` are steps of the run, fine-tuned on the tasks its `finetune:` lists."""
    if not spec.finetune_steps:
        return
    if not spec.finetune:
        raise KinheritError(f"run {spec.name!r} has finetune_steps but no finetune tasks; add finetune: [TASK]")
    beyond = [step for step in spec.finetune_steps if step > max_steps]
    if beyond:
        raise KinheritError(f"run {spec.name!r}: finetune_steps {beyond} lie beyond its max_steps {max_steps}")


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


def corpus_args(experiment: Experiment, names: list[str]) -> list[str]:
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
    if spec.finetune_steps:  # kept for fine-tuning; not part of the run's identity, since training is unchanged
        final = s.get("max_steps", KinheritTrainingArguments.max_steps)  # fine-tuned as the run's final model
        s["keep_checkpoints"] = sorted({*s.get("keep_checkpoints", []), *spec.finetune_steps} - {final})
    return {**s, "corpus": corpus_args(experiment, corpus_names), "tokenizer": str(tokenizer_folder(experiment)),
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


def tokenizer_folder(experiment: Experiment) -> Path:
    """Where the experiment's tokenizer is: the path given, or the one the experiment trains."""
    return Path(experiment.tokenizer.get("path", experiment.output_dir / "tokenizer"))
