"""Property tests: any experiment YAML or `kinherit pretrain` command line either validates or raises
`KinheritError` with a message; never another exception from deep inside."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinherit.core.errors import KinheritError
from kinherit.experiment.spec import load_experiment, parse_experiment, run_arguments
from kinherit.training.options import parse_pretrain_args

BASE = {
    "name": "prop", "seed": 0, "tokenizer": {"corpus": "wiki", "vocab_size": 512},
    "corpora": {"wiki": {"source": "wikipedia", "validation_fraction": 0.1}},
    "defaults": {"block_size": 32, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
                 "inherit": {"temperature": 1.0}},
    "runs": [{"name": "teacher", "model": "llama-1x64", "max_steps": 10},
             {"name": "scratch", "model": "llama-2x64", "max_steps": 10, "seeds": [0, 1]},
             {"name": "ki", "model": "llama-2x64", "max_steps": 10, "teachers": ["teacher"], "baseline": "scratch",
              "seeds": [0, 1], "inherit": {"inherit_steps": 5, "inherit_schedule": "linear"},
              "training_args": {"report_to": "none"}}],
}
KEYS = ["name", "seed", "source", "model", "max_steps", "learning_rate", "per_device_train_batch_size", "block_size",
        "teachers", "baseline", "seeds", "inherit", "inherit_steps", "temperature", "inherit_schedule",
        "inherit_start", "runs", "corpora", "defaults", "training_args", "report_to", "lr_scheduler_type", "routing",
        "teacher_weights", "validation_fraction", "vocab_size", "corpus", "divergence", "chunk_size", "warmup_steps",
        "eval_steps", "mlm_probability", "batch_size", "steps", "bogus"]
SCALARS = (st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(["", "1e-3", "nan", "-1", "teacher", "scratch", "wiki", "linear", "llama-1x64", "x"])
           | st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=3), max_leaves=8)


def containers(node, path=()):
    """Every (path, container) in a nested dict/list structure."""
    yield path, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        if isinstance(value, dict | list):
            yield from containers(value, (*path, key))


@st.composite
def mutated_experiments(draw):
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        places = list(containers(data))
        _path, node = draw(st.sampled_from(places))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if isinstance(node, dict):
            if action == "add" or not node:
                node[draw(st.sampled_from(KEYS))] = draw(SCALARS | VALUES)
            elif action == "delete":
                del node[draw(st.sampled_from(sorted(node, key=str)))]
            else:
                node[draw(st.sampled_from(sorted(node, key=str)))] = draw(SCALARS | VALUES)
        elif isinstance(node, list) and node:
            index = draw(st.integers(0, len(node) - 1))
            if action == "delete":
                del node[index]
            else:
                node[index] = draw(SCALARS | VALUES)
    return data


def check_experiment(data, tmp: Path) -> None:
    try:
        experiment = parse_experiment(data, output_dir=str(tmp))
        for spec in experiment.runs.values():
            run_arguments(experiment, spec)
    except KinheritError as error:
        assert str(error)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_experiments())
def test_any_experiment_validates_or_raises_our_error(tmp_path_factory, data):
    check_experiment(data, tmp_path_factory.getbasetemp() / "prop")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200) | VALUES.map(yaml.safe_dump))
def test_any_yaml_text_validates_or_raises_our_error(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "prop.yaml"
    path.write_text(text)
    try:
        load_experiment(path, output_dir=str(tmp_path_factory.getbasetemp() / "prop"))
    except KinheritError as error:
        assert str(error)


FLAGS = ["--model", "--corpus", "--tokenizer", "--block_size", "--validation_fraction", "--max_documents",
         "--vocab_size", "--mlm_probability", "--teacher", "--teacher_weights", "--temperature", "--divergence",
         "--jsd_beta", "--inherit_schedule", "--inherit_steps", "--inherit_start", "--inherit_value",
         "--inherit_time_constant", "--chunk_size", "--teacher_dtype", "--nonfinite", "--loss_kernels", "--max_steps",
         "--learning_rate", "--warmup_steps", "--lr_scheduler_type", "--eval_strategy", "--save_strategy",
         "--per_device_train_batch_size", "--gradient_accumulation_steps", "--seed", "--bf16", "--fp16",
         "--weight_decay", "--no_such_flag", "--trust_remote_code", "--fused_loss"]
ARGUMENTS = st.sampled_from(["0", "-1", "1", "8", "100", "2.5", "0.5", "nan", "inf", "true", "no", "linear", "jsd",
                             "forward_kl", "stop", "skip", "float32", "a=b", "1e-3", "/nonexistent", ""])
TOKENS = st.sampled_from(FLAGS) | ARGUMENTS | st.text(max_size=6).filter(lambda t: t not in ("-h", "--help"))
PAIRS = st.lists(st.tuples(st.sampled_from(FLAGS), ARGUMENTS), max_size=5).map(lambda ps: [t for p in ps for t in p])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TOKENS, max_size=8) | PAIRS)
def test_any_command_line_validates_or_raises_our_error(argv):
    try:
        parse_pretrain_args(argv)
    except KinheritError as error:
        assert str(error)
