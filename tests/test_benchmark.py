"""Each benchmark runs what it times on a tiny input, so that a change to the trainer, the teacher cache or the loss
kernels cannot leave a script under `benchmarks/` broken until someone next runs it in full."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str = "step_cost"):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_variant_of_the_step_cost_benchmark_steps_on_a_tiny_pair(tmp_path):
    step_cost = load_benchmark()
    pair = step_cost.Pair("llama-2x128", "llama-2x128", vocab=256, batch=2, block=16)
    bench = step_cost.Bench(pair, torch.device("cpu"), temperature=2.0, cache_root=str(tmp_path))
    step_cost.measured_work(bench, "cache_build", lambda: None)
    assert (tmp_path / f"cache-{step_cost.CACHE_K}").is_dir()
    for variant in step_cost.VARIANTS:
        bench.step(variant)()
        norms = [p.grad.norm().item() for p in bench.student.parameters() if p.grad is not None]
        assert norms and all(math.isfinite(n) for n in norms), variant
        assert sum(norms) > 0, variant
    bound, student, teacher = bench.bound()
    assert bound == 1.0 + teacher / student and teacher > 0


def test_the_loss_kernel_benchmark_times_every_backend(tmp_path, capsys):
    kernels = load_benchmark("loss_kernels")
    result = kernels.main(["--shapes", "8x300", "--rounds", "1", "--warmup", "0", "--json", str(tmp_path / "k.json")])
    timings = result["shapes"]["8x300"]
    assert set(timings) == {"eager", "compiled", "native"}
    assert all(value > 0 for terms in timings.values() for value in terms.values())
    assert "| 8x300 | ki |" in capsys.readouterr().out and (tmp_path / "k.json").exists()


def test_the_data_memory_benchmark_prepares_a_corpus(tmp_path, capsys):
    data = load_benchmark("data_memory")
    result = data.main(["--sizes", "0.2", "--no-train", "--vocab_size", "300", "--block_size", "32", "--parts", "2",
                        "--workdir", str(tmp_path)])
    entry = result["sizes"][0.2]
    assert entry["tokens"] > 10_000 and entry["peak_anon_mb"] > 0 and entry["tokens_per_second"] > 0
    assert entry["processes"] == 2 and "0.2 MB text, 2 process(es): preparing" in capsys.readouterr().out
    again = data.main(["--sizes", "0.2", "--reuse", "--starts", "--vocab_size", "300", "--block_size", "32",
                       "--workdir", str(tmp_path)])["sizes"][0.2]
    assert [run["start"] for run in again["training"]] == ["first", "later"]
    assert all(run["train_seconds"] > 0 and run["train_peak_anon_mb"] > 0 for run in again["training"])


def test_the_plan_backtest_forecasts_finished_pairs(tmp_path, capsys):
    """Three analyses' worth of pairs from known curves: the back-test fits every one and ranks the teachers."""
    import numpy as np

    backtest = load_benchmark("plan_backtest")
    steps = list(range(0, 801, 50))
    saved = {}
    for index, (teacher, floor) in enumerate([(5.2, 3.7), (5.4, 3.8), (5.6, 3.9)]):
        ki = [9.0] + [float(floor + 12 * s ** -0.45) for s in steps[1:]]
        base = [9.0] + [float(4.0 + 12 * s ** -0.4) for s in steps[1:]]
        target = base[-1]
        reached = float(np.interp(-target, [-v for v in ki], steps))
        saved[f"ki-{index}"] = {"ki_val_loss_at_equal_steps": [{"step": s, "ki": k, "baseline": b}
                                                               for s, k, b in zip(steps, ki, base, strict=True)],
                                "steps_fraction": reached / 800, "teacher_val_loss": teacher}
    (tmp_path / "teacher-size").mkdir()
    (tmp_path / "teacher-size" / "report.json").write_text(json.dumps({"compute_saved": saved}))
    result = backtest.main(["--reports", str(tmp_path / "*" / "report.json"), "--pilots", "0.5"])
    summary = result["results"][0.5]
    assert summary["compared"] == 3 and summary["mean_abs_error"] < 0.02  # exact curves: interpolation only
    assert result["ranking"]["teacher-size"]["rho"] == 1.0
    assert "3 distinct KI / self-learning pairs" in capsys.readouterr().out


def test_the_cache_bytes_benchmark_measures_every_shard_format(tmp_path, capsys):
    from kinherit.inheritance.topk import TopKTarget
    from kinherit.training.cache_shards import write_shard

    cache_bytes = load_benchmark("cache_bytes")
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (500, 8))
    log_probs = -torch.rand(500, 8).sort(dim=1).values * 4
    write_shard(tmp_path / "epoch0-shard00000.safetensors", TopKTarget(ids, log_probs), [100] * 5, 300, "float16",
                "none")
    (tmp_path / "cache.json").write_text(json.dumps({"settings": {"vocab_size": 300, "top_k": 8,
                                                                  "log_prob_dtype": "float16"}}))
    report = cache_bytes.main([str(tmp_path), "--batch_blocks", "3", "--batches", "4", "--repeats", "1"])
    formats = report["formats"]
    assert report["positions"] == 500 and report["packed_id_bits"] == 9 and set(formats) == {"zstd", "none"}
    assert formats["zstd"]["bytes_per_position"] < formats["none"]["bytes_per_position"] < 8 * 4 + 1
    assert all(entry["read_ms_per_batch"] > 0 for entry in formats.values())
    assert "500 positions at K = 8" in capsys.readouterr().out


def test_the_step_cost_benchmark_times_teachers_with_another_tokenizer(tmp_path):
    step_cost = load_benchmark()
    pair = step_cost.Pair("llama-1x64", "llama-1x64", vocab=300, batch=2, block=32)
    bench = step_cost.CrossBench(pair, torch.device("cpu"), temperature=1.0, cache_root=str(tmp_path), documents=12)
    entry = step_cost.cross_entry(bench, warmup=0, repeats=1)
    assert entry["teacher_vocab"] == 600 and 0.5 < entry["aligned_share"] <= 1.0
    assert set(entry["over_ki"]) == {"ki_cross_map", "ki_cross_uld", "ki_cross_cache"}
    assert all(r > 0 for r in entry["over_ki"].values())
    assert (tmp_path / f"cross-cache-{step_cost.CACHE_K}" / "cache.json").exists()


def test_the_cross_tokenizer_study_runs_its_commands_and_tabulates_them(tmp_path, capsys):
    """A tiny demo-style experiment as the same-tokenizer side, then the study's 16k-style teacher with both methods
    and a cached "open model" (that teacher again), all through `kinherit` commands, and the table."""
    import yaml

    from kinherit.cli import main

    same = tmp_path / "same"
    config = {"name": "tiny", "output_dir": str(same), "tokenizer": {"corpus": "wiki", "vocab_size": 300},
              "corpora": {"wiki": {"source": "wikipedia", "max_documents": 20, "validation_fraction": 0.075}},
              "defaults": {"block_size": 32, "eval_steps": 4, "logging_steps": 4, "report_to": "none",
                           "disable_tqdm": True, "eval_on_start": True},
              "runs": [{"name": "teacher", "model": "llama-1x64", "max_steps": 8},
                       {"name": "scratch", "model": "llama-1x64", "max_steps": 8},
                       {"name": "ki", "model": "llama-1x64", "max_steps": 8, "teachers": ["teacher"],
                        "baseline": "scratch", "inherit": {"inherit_steps": 8, "temperature": 0.5}}]}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    assert main(["experiment", str(tmp_path / "tiny.yaml"), "--finetune", "false"]) == 0
    study = load_benchmark("cross_tokenizer")
    common = ["--same", str(same), "--workdir", str(tmp_path / "study"), "--smoke"]
    study.main([*common, "--stage", "vocab"])
    study.main([*common, "--stage", "smollm2", "--smollm2", str(tmp_path / "study" / "runs" / "teacher-16k")])
    table = study.main([*common, "--stage", "table", "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "validation_loss.png").exists() and (tmp_path / "out" / "table.json").exists()
    rows = table["rows"]
    assert set(rows) == {"ki (same tokenizer)", "ki-16k-map", "ki-16k-uld", "ki-smollm2"}
    assert rows["ki-16k-map"]["cross_tokenizer"]["method"] == "map"
    assert rows["ki-smollm2"]["cross_tokenizer"]["aligned_share"] > 0.5
    assert all(row["ki_final_val_loss"] > 0 for row in rows.values())
    teacher_tokenizer = str(tmp_path / "study" / "tokenizer-16k")
    ratio = study.main([*common, "--stage", "tokens", "--teacher_tokenizers", teacher_tokenizer])[teacher_tokenizer]
    assert 0.5 < ratio["teacher_tokens_per_student_token"] < 1.5 and 0.5 < ratio["aligned_share"] <= 1.0


def test_the_paper_experiments_start_through_the_paper_start_benchmark(tmp_path, tokenizer_dir, capsys):
    """configs/paper YAMLs, as committed, adapted to a local corpus and a tiny model: every one parses as an
    experiment, and one runs its teacher, scratch and KI runs one step each (block length, batch and accumulation
    shrunk here only to keep the test short)."""
    import yaml

    from kinherit.data import BUILTIN_CORPORA
    from kinherit.experiment.spec import load_experiment

    paper_start = load_benchmark("paper_start")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": text}) for _id, text in BUILTIN_CORPORA["wikipedia"]()))
    configs = sorted((BENCHMARKS.parent / "configs" / "paper").glob("*.yaml"))
    for config in configs:
        adapted = paper_start.adapted(yaml.safe_load(config.read_text()), str(corpus), str(tokenizer_dir),
                                      "roberta-1x64", 1, tmp_path / "parsed", {})
        (tmp_path / config.name).write_text(yaml.safe_dump(adapted))
        experiment = load_experiment(tmp_path / config.name)
        assert experiment.launcher is None and list(experiment.runs) == ["teacher", "scratch", "ki"]
    report = paper_start.main([str(configs[0]), "--corpus", str(corpus), "--tokenizer", str(tokenizer_dir),
                               "--steps", "1", "--workdir", str(tmp_path / "run"), "--set", "block_size=32",
                               "per_device_train_batch_size=2", "gradient_accumulation_steps=1"])
    assert report["runs"] == ["teacher", "scratch", "ki"] and report["peak_mb"] > 0
    for run in report["runs"]:
        log = (tmp_path / "run" / "runs" / "runs" / run / "log.jsonl").read_text().splitlines()
        assert max(json.loads(line).get("step", 0) for line in log) == 1
    assert "3 runs (teacher, scratch, ki) of 1 step(s)" in capsys.readouterr().out
