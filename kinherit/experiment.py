"""`kinherit experiment FILE.yaml`: a whole KI experiment from one YAML file.

The file names a tokenizer, the corpora and a list of runs; runs name their teachers (other runs) and
their self-learning baseline. Runs execute in dependency order, each in `OUTPUT/runs/NAME/`; a run
whose `run.json` exists is done and skipped, a run with a checkpoint resumes from it, and the report
is written at the end. A run with `seeds: [...]` is repeated once per seed (`NAME-s0`, ...); its
teachers and baseline are matched seed for seed when they are repeated too.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from kinherit.atomic import write_json_atomic
from kinherit.errors import KinheritError
from kinherit.sealed import last_good_checkpoint

logger = logging.getLogger(__name__)
GROWN = "grown"  # the folder of a run's grown initial model
LAUNCH_FILE = "launch.json"  # a run's `kinherit pretrain` arguments when it runs under a launcher

TOP_KEYS = {"name", "output_dir", "seed", "tokenizer", "corpora", "defaults", "runs", "description", "launcher"}
TOKENIZER_KEYS = {"corpus", "vocab_size", "path"}
CORPUS_KEYS = {"source", "domain", "text_field", "validation_fraction", "max_documents", "hf_config", "hf_split"}
# The value each key takes (see `_coerce`); every key of a run, of `defaults`, of a corpus and of `inherit:`.
INT, POSITIVE, FLOAT, POSITIVE_FLOAT, FRACTION, STR, BOOL, MAP, STRS, NUMBERS = (
    "an integer >= 0", "an integer > 0", "a number >= 0", "a number > 0", "a number in [0, 1)", "a string",
    "true or false", "a mapping", "a string or a list of strings", "a list of numbers")
TRAIN_TYPES = {"model": STR, "corpus": STRS, "max_steps": POSITIVE, "learning_rate": POSITIVE_FLOAT,
               "batch_size": POSITIVE, "grad_accum": POSITIVE, "block_size": POSITIVE, "warmup": FLOAT,
               "weight_decay": FLOAT, "lr_scheduler": STR, "max_grad_norm": FLOAT, "eval_steps": POSITIVE,
               "logging_steps": POSITIVE, "save_steps": POSITIVE, "mlm_probability": FRACTION,
               "training_args": MAP, "inherit": MAP, "seed": INT}
TRAIN_KEYS = set(TRAIN_TYPES)
RUN_TYPES = {**TRAIN_TYPES, "name": STR, "teachers": STRS, "teacher_weights": NUMBERS, "routing": MAP,
             "baseline": STR, "grow": STR, "description": STR}
RUN_KEYS = set(RUN_TYPES) | {"seeds"}
CORPUS_TYPES = {"source": STR, "domain": STR, "text_field": STR, "validation_fraction": FRACTION,
                "max_documents": POSITIVE, "hf_config": STR, "hf_split": STR}
CORPUS_KEYS = set(CORPUS_TYPES)
# An `inherit:` key of the YAML -> the `InheritanceArguments` field it sets and the value it takes.
# Keys left out keep the field's own default; range checks beyond these are the dataclass's own.
INHERIT_FIELDS = {"schedule": ("inherit_schedule", STR), "steps": ("inherit_steps", POSITIVE),
                  "start": ("inherit_start", FLOAT), "value": ("inherit_value", FLOAT),
                  "time_constant": ("inherit_time_constant", POSITIVE_FLOAT), "margin": ("inherit_margin", FLOAT),
                  "temperature": ("temperature", POSITIVE_FLOAT), "divergence": ("divergence", STR),
                  "jsd_beta": ("jsd_beta", FLOAT), "chunk_size": ("chunk_size", POSITIVE),
                  "teacher_dtype": ("teacher_dtype", STR), "compile_loss": ("compile_loss", BOOL),
                  "fused_loss": ("fused_loss", BOOL), "nonfinite": ("nonfinite", STR)}
INHERIT_KEYS = set(INHERIT_FIELDS)
DEFAULTS = {"block_size": 128, "batch_size": 16, "grad_accum": 1, "learning_rate": 1e-3, "warmup": 0.05,
            "weight_decay": 0.01, "lr_scheduler": "linear", "max_grad_norm": 1.0, "eval_steps": 50,
            "logging_steps": 10, "save_steps": 200, "mlm_probability": 0.15, "max_steps": 1000}


def _number(value: Any) -> float | None:
    """`value` as a finite number (YAML reads `1e-3`, without a dot, as a string), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _coerce(where: str, key: str, value: Any, kind: str) -> Any:
    """Check that `value` is of `kind` (one of the type names above); numbers given as strings are converted."""
    if kind in (INT, POSITIVE):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= (1 if kind == POSITIVE else 0)
    elif kind in (FLOAT, POSITIVE_FLOAT, FRACTION):
        number = _number(value)
        ok = number is not None and (number > 0 if kind == POSITIVE_FLOAT else number >= 0)
        ok = ok and (kind != FRACTION or number < 1)
        if ok and isinstance(value, str):
            value = number
    elif kind == STR:
        ok = isinstance(value, str) and bool(value)
    elif kind == BOOL:
        ok = isinstance(value, bool)
    elif kind == MAP:
        ok = isinstance(value, dict)
    elif kind == STRS:
        ok = (isinstance(value, str) and bool(value)) or (
            isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value))
    else:  # NUMBERS
        ok = isinstance(value, list) and all(_number(v) is not None and not isinstance(v, str) for v in value)
    if not ok:
        raise KinheritError(f"{where}: {key} must be {kind}, got {value!r}")
    return value


def _check_values(where: str, data: dict[str, Any], types: dict[str, str]) -> dict[str, Any]:
    """`data` with every value of a known key checked (and numbers given as strings converted)."""
    return {k: _coerce(where, k, v, types[k]) if k in types else v for k, v in data.items()}


def _check_keys(where: str, data: Any, valid: set[str]) -> None:
    if not isinstance(data, dict):
        raise KinheritError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - valid)
    if unknown:
        raise KinheritError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(valid)}")


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

    def teacher_runs(self) -> list[str]:
        """The runs this one inherits from."""
        return list(self.routing.values()) or list(self.teachers)

    def dependencies(self) -> list[str]:
        """Runs that must finish before this one (its teachers, and the run it is grown from)."""
        grown = [self.grow] if self.grow and self.grow not in self.teacher_runs() else []
        return self.teacher_runs() + grown


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
            expanded.append({**run, "_group": run["name"], "seed": run.get("seed", default_seed)})
            continue
        for seed in seeds:
            copy_ = {k: v for k, v in run.items() if k != "seeds"}
            copy_["name"], copy_["seed"], copy_["_group"] = f"{run['name']}-s{seed}", seed, run["name"]

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
            if "grow" in run:
                copy_["grow"] = rename(run["grow"])
            expanded.append(copy_)
    return expanded


def _check_inherit(where: str, inherit: Any) -> dict[str, Any]:
    _check_keys(where, inherit, INHERIT_KEYS)
    return {k: _coerce(where, k, v, INHERIT_FIELDS[k][1]) for k, v in inherit.items()}


def _check_run(index: int, run: Any) -> dict[str, Any]:
    _check_keys(f"run #{index + 1}", run, RUN_KEYS)
    if not isinstance(run.get("name"), str) or not run["name"]:
        raise KinheritError(f"run #{index + 1} has no name (a non-empty string)")
    where = f"run {run['name']!r}"
    run = _check_values(where, run, RUN_TYPES)
    seeds = run.get("seeds", [0])  # checked here, so that a run's seeds are valid before others refer to them
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise KinheritError(f"{where}: seeds must be a non-empty list of integers")
    if "inherit" in run:
        run["inherit"] = _check_inherit(f"{where} inherit", run["inherit"])
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in run.get("routing", {}).items()):
        raise KinheritError(f"{where}: routing must map domain names to run names")
    if not all(isinstance(k, str) for k in run.get("training_args", {})):
        raise KinheritError(f"{where}: training_args must map TrainingArguments field names to values")
    return run


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
    """Validate an experiment mapping (as loaded from YAML) into an `Experiment`."""
    _check_keys("the experiment", data, TOP_KEYS)
    for key in ("name", "runs", "corpora"):
        if key not in data:
            raise KinheritError(f"the experiment has no {key!r}; it needs name, corpora and runs")
    top = _check_values("the experiment", data, {"name": STR, "output_dir": STR, "seed": INT, "description": STR})
    corpora = data["corpora"]
    if not isinstance(corpora, dict) or not corpora or not all(isinstance(k, str) for k in corpora):
        raise KinheritError("corpora must map corpus names to settings, e.g. {wiki: {source: wikipedia}}")
    for name, spec in corpora.items():
        _check_keys(f"corpus {name!r}", spec, CORPUS_KEYS)
        if "source" not in spec:
            raise KinheritError(f"corpus {name!r} has no 'source'")
        corpora[name] = _check_values(f"corpus {name!r}", spec, CORPUS_TYPES)
    tokenizer = data.get("tokenizer", {"corpus": next(iter(corpora)), "vocab_size": 8192})
    _check_keys("tokenizer", tokenizer, TOKENIZER_KEYS)
    tokenizer = _check_values("tokenizer", tokenizer, {"corpus": STR, "vocab_size": POSITIVE, "path": STR})
    if "path" not in tokenizer and tokenizer.get("corpus", next(iter(corpora))) not in corpora:
        raise KinheritError(f"tokenizer corpus {tokenizer.get('corpus')!r} is not one of the corpora {sorted(corpora)}")
    defaults = data.get("defaults", {})
    _check_keys("defaults", defaults, TRAIN_KEYS)
    defaults = _check_values("defaults", defaults, TRAIN_TYPES)
    if "inherit" in defaults:
        defaults["inherit"] = _check_inherit("defaults inherit", defaults["inherit"])
    raw_runs = data["runs"]
    if not isinstance(raw_runs, list) or not raw_runs:
        raise KinheritError("runs must be a non-empty list")
    raw_runs = [_check_run(index, run) for index, run in enumerate(raw_runs)]
    names = [r["name"] for r in raw_runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise KinheritError(f"run names must be unique; repeated: {duplicates}")
    runs: dict[str, RunSpec] = {}
    for run in _expand_seeds(raw_runs, top.get("seed", 0)):
        settings = {**DEFAULTS, **copy.deepcopy(defaults),
                    **{k: v for k, v in run.items() if k in TRAIN_KEYS}}
        settings.setdefault("corpus", next(iter(corpora)))
        if "inherit" in defaults and "inherit" in run:
            settings["inherit"] = {**defaults["inherit"], **run["inherit"]}
        if "teacher_weights" in run:
            settings["teacher_weights"] = run["teacher_weights"]
        if "model" not in settings:
            raise KinheritError(f"run {run['name']!r} has no model (a preset, config.json or checkpoint)")
        corpus_names = settings["corpus"] if isinstance(settings["corpus"], list) else [settings["corpus"]]
        for corpus in corpus_names:
            if corpus not in corpora:
                raise KinheritError(f"run {run['name']!r} uses corpus {corpus!r}; defined corpora: {sorted(corpora)}")
        teachers = run.get("teachers", [])
        if isinstance(teachers, str):
            teachers = [teachers]
        routing = run.get("routing", {})
        if teachers and routing:
            raise KinheritError(f"run {run['name']!r} has both teachers and routing; use one")
        runs[run["name"]] = RunSpec(name=run["name"], settings=settings, teachers=list(teachers),
                                    routing=dict(routing), baseline=run.get("baseline"), group=run["_group"],
                                    seed=run["seed"], grow=run.get("grow"))
    for spec in runs.values():
        for ref in [*spec.dependencies(), *([spec.baseline] if spec.baseline else [])]:
            if ref not in runs:
                raise KinheritError(f"run {spec.name!r} refers to unknown run {ref!r}; runs: {sorted(runs)}")
        weights = spec.settings.get("teacher_weights")
        if weights is not None and len(weights) != len(spec.teachers):
            raise KinheritError(f"run {spec.name!r} has {len(weights)} teacher_weights for "
                                f"{len(spec.teachers)} teachers")
    experiment = Experiment(name=top["name"], output_dir=Path(output_dir or top.get("output_dir")
                                                              or f"runs/{top['name']}"),
                            tokenizer=tokenizer, corpora=corpora, runs=runs, description=top.get("description", ""),
                            launcher=_check_launcher(data.get("launcher")))
    experiment.order()  # raises on cycles
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


def _construct(where: str, cls: type, **values: Any) -> Any:
    """`cls(**values)`, with the dataclass's own value checks reported as our error naming the run."""
    try:
        return cls(**values)
    except KinheritError as error:
        raise KinheritError(f"{where}: {error}") from error
    except (ValueError, TypeError) as error:
        raise KinheritError(f"{where}: invalid {cls.__name__} ({error})") from error


def run_settings(experiment: Experiment, spec: RunSpec, tokenizer_path: Path,
                 cache_dir: Path) -> dict[str, dict[str, Any]]:
    """The keyword arguments of one run's model, data, inheritance and training argument dataclasses."""
    from kinherit.pretrain import KinheritTrainingArguments

    s = spec.settings
    run_dir = experiment.output_dir / "runs" / spec.name
    corpus_names = s["corpus"] if isinstance(s["corpus"], list) else [s["corpus"]]
    data = dict(corpus=_corpus_args(experiment, corpus_names), tokenizer=str(tokenizer_path),
                block_size=int(s["block_size"]), cache_dir=str(cache_dir), mlm_probability=float(s["mlm_probability"]),
                text_field=_first_corpus_setting(experiment, corpus_names, "text_field", "text"),
                validation_fraction=float(_first_corpus_setting(experiment, corpus_names, "validation_fraction", 0.05)),
                max_documents=_first_corpus_setting(experiment, corpus_names, "max_documents", None))
    teacher_dirs = {name: str(experiment.output_dir / "runs" / name) for name in spec.teacher_runs()}
    if spec.routing:
        teacher_args = [f"{domain}={teacher_dirs[name]}" for domain, name in spec.routing.items()]
    else:
        teacher_args = [teacher_dirs[name] for name in spec.teachers]
    inherit_fields = {INHERIT_FIELDS[key][0]: value for key, value in (s.get("inherit") or {}).items()}
    where = f"run {spec.name!r}"
    inherit = dict(teacher=teacher_args, teacher_weights=[float(w) for w in s.get("teacher_weights") or []],
                   **inherit_fields)
    extra = dict(s.get("training_args") or {})
    valid = {f.name for f in fields(KinheritTrainingArguments) if f.init}
    unknown = sorted(set(extra) - valid)
    if unknown:
        raise KinheritError(f"{where}: unknown training_args {unknown}; they must be TrainingArguments fields "
                            "(see `kinherit pretrain --help`)")
    own = dict(
        output_dir=str(run_dir), max_steps=int(s["max_steps"]), learning_rate=float(s["learning_rate"]),
        per_device_train_batch_size=int(s["batch_size"]), gradient_accumulation_steps=int(s["grad_accum"]),
        warmup_steps=float(s["warmup"]), weight_decay=float(s["weight_decay"]),
        lr_scheduler_type=s["lr_scheduler"], max_grad_norm=float(s["max_grad_norm"]),
        eval_steps=int(s["eval_steps"]), logging_steps=int(s["logging_steps"]), save_steps=int(s["save_steps"]),
        seed=spec.seed, data_seed=spec.seed, eval_on_start=True, report_to="tensorboard")
    clashes = sorted(set(extra) & (set(own) - {"report_to"}))
    if clashes:
        raise KinheritError(f"{where}: training_args {clashes} are set by the run's own keys (max_steps, "
                            "learning_rate, batch_size, ...); set them there")
    return {"model": {"model": s["model"]}, "data": data, "inherit": inherit, "training": {**own, **extra}}


def run_arguments(experiment: Experiment, spec: RunSpec, tokenizer_path: Path, cache_dir: Path) -> tuple:
    """The (model, data, inheritance, training) argument dataclasses of one run."""
    return construct_arguments(spec, run_settings(experiment, spec, tokenizer_path, cache_dir))


def construct_arguments(spec: RunSpec, settings: dict[str, dict[str, Any]]) -> tuple:
    """The argument dataclasses made from `run_settings`' keyword arguments, each value checked."""
    from kinherit.pretrain import DataArguments, KinheritTrainingArguments, ModelArguments
    from kinherit.trainer import InheritanceArguments

    where = f"run {spec.name!r}"
    return tuple(_construct(where, cls, **settings[key]) for cls, key in (
        (ModelArguments, "model"), (DataArguments, "data"), (InheritanceArguments, "inherit"),
        (KinheritTrainingArguments, "training")))


def _fingerprint(spec: RunSpec, launcher: str | dict[str, Any] | None = None) -> str:
    identity = {"settings": spec.settings, "teachers": spec.teachers, "routing": spec.routing, "seed": spec.seed}
    if launcher is not None:  # the number of processes changes the global batch
        identity["launcher"] = launcher
    if spec.grow:
        identity["grow"] = spec.grow
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def prepare_output(experiment: Experiment) -> None:
    """Claim the output folder for this experiment (refuse one that holds another experiment)."""
    experiment.output_dir.mkdir(parents=True, exist_ok=True)
    manifest = experiment.output_dir / "experiment.json"
    if manifest.exists():
        previous = json.loads(manifest.read_text())
        if previous.get("name") != experiment.name:
            raise KinheritError(f"{experiment.output_dir} holds experiment {previous.get('name')!r}, not "
                                f"{experiment.name!r}; choose another output_dir or delete that folder")
    runs = {name: {"group": spec.group, "seed": spec.seed, "teachers": spec.teacher_runs(), "grow": spec.grow,
                   "baseline": spec.baseline, "model": spec.settings["model"],
                   "fingerprint": _fingerprint(spec, experiment.launcher),
                   "max_steps": spec.settings["max_steps"], "inherit": spec.settings.get("inherit")}
            for name, spec in experiment.runs.items()}
    write_json_atomic(manifest, {"name": experiment.name, "description": experiment.description, "runs": runs})


def ensure_tokenizer(experiment: Experiment) -> Path:
    """The experiment's tokenizer folder, training the BPE on the first time."""
    from kinherit.data import CorpusSpec, load_corpus, train_tokenizer

    settings = experiment.tokenizer
    if "path" in settings:
        return Path(settings["path"])
    target = experiment.output_dir / "tokenizer"
    if (target / "tokenizer.json").exists():
        return target
    corpus_name = settings.get("corpus", next(iter(experiment.corpora)))
    spec = experiment.corpora[corpus_name]
    corpus = load_corpus([CorpusSpec(**{k: v for k, v in spec.items()})])
    logger.info("training the experiment's tokenizer (%s tokens) on %s", settings.get("vocab_size", 8192), corpus_name)
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


def run_experiment(path: str | Path, output_dir: str | None = None, only: list[str] | None = None) -> dict[str, Any]:
    """Run every unfinished run of the experiment in dependency order, then write the report."""
    from kinherit.evaluation.report import write_report
    from kinherit.pretrain import RUN_MARKER, pretrain

    experiment = load_experiment(path, output_dir)
    prepare_output(experiment)
    tokenizer_path = ensure_tokenizer(experiment)
    cache_dir = experiment.output_dir / "cache"
    order = experiment.order(only)
    for position, name in enumerate(order, start=1):
        spec = experiment.runs[name]
        run_dir = experiment.output_dir / "runs" / name
        fingerprint_file = run_dir / "spec.json"
        fingerprint = _fingerprint(spec, experiment.launcher)
        if fingerprint_file.exists() and json.loads(fingerprint_file.read_text())["fingerprint"] != fingerprint:
            raise KinheritError(f"run {name!r} in {run_dir} was made with other settings than the YAML now gives; "
                                "delete that folder to redo it, or give the changed run a new name")
        if (run_dir / RUN_MARKER).exists():
            print(f"[{position}/{len(order)}] {name}: done, skipped", flush=True)
            continue
        settings = run_settings(experiment, spec, tokenizer_path, cache_dir)
        last = last_good_checkpoint(run_dir)
        settings["training"]["resume_from_checkpoint"] = last
        if spec.grow:
            settings["model"]["model"] = str(run_dir / GROWN)
        arguments = construct_arguments(spec, settings)  # every value is checked before anything is written
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(fingerprint_file, {"fingerprint": fingerprint})
        if spec.grow:
            grow_start(experiment, spec, run_dir)
        teachers = f" inheriting from {', '.join(spec.teacher_runs())}" if spec.teacher_runs() else ""
        teachers += f", grown from {spec.grow}" if spec.grow else ""
        resumed = f", resuming {Path(last).name}" if last else ""
        print(f"[{position}/{len(order)}] {name}: {spec.settings['model']}, {spec.settings['max_steps']} steps"
              f"{teachers}{resumed}", flush=True)
        arguments_file = run_dir / LAUNCH_FILE
        command = experiment.launch_command(arguments_file)
        if command is None:
            summary = pretrain(*arguments)
        else:
            write_json_atomic(arguments_file, {k: v for part in settings.values() for k, v in part.items()})
            print(f"    {shlex.join(command)}", flush=True)
            if subprocess.run(command).returncode != 0:
                raise KinheritError(f"run {name!r} failed under the launcher (see its output above); re-run the "
                                    "experiment to resume it from its last checkpoint")
            summary = json.loads((run_dir / RUN_MARKER).read_text())
        loss = summary["final_val_loss"]
        print(f"[{position}/{len(order)}] {name}: validation loss {loss:.4f} (ppl {math.exp(loss):.1f}) in "
              f"{summary['train_seconds']:.0f} s", flush=True)
    report = write_report(experiment.output_dir)
    print(report["headline"], flush=True)
    print(f"report: {experiment.output_dir / 'report.md'}", flush=True)
    return report
