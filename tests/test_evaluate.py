"""`kinherit evaluate`: a run's own corpus gives back its final eval_loss; other corpora and splits; bad input."""

from __future__ import annotations

import json
import math

import pytest

from kinherit.cli import main
from kinherit.commands.evaluate import evaluate
from kinherit.commands.pretrain import pretrain
from kinherit.core.errors import KinheritError
from kinherit.training.options import (
    DataArguments,
    EvaluateArguments,
    InheritanceArguments,
    KinheritTrainingArguments,
    ModelArguments,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer_dir):
    """A masked LM trained for a few steps, evaluated at its last step (block 24, validation 0.2, seed 7)."""
    out = tmp_path_factory.mktemp("evaluate") / "mlm"
    data = DataArguments(tokenizer=str(tokenizer_dir), block_size=24, max_documents=12, validation_fraction=0.2,
                         eval_mask_seed=7, cache_dir=str(out.parent / "cache"))
    args = KinheritTrainingArguments(output_dir=str(out), max_steps=8, eval_steps=8, save_strategy="no",
                                     report_to="none", disable_tqdm=True, use_cpu=True)
    summary = pretrain(ModelArguments(model="roberta-2x64"), data, InheritanceArguments(), args)
    return out, summary


def test_a_runs_own_corpus_gives_its_final_eval_loss(run, tmp_path, capsys):
    folder, summary = run
    argv = ["evaluate", str(folder), "--corpus", "wikipedia", "shakespeare", "--json", str(tmp_path / "e.json")]
    assert main(argv) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    own, other = result["rows"]
    assert own["loss"] == pytest.approx(summary["final_val_loss"], abs=1e-9)  # the same positions and masks
    assert own["data"]["block_size"] == 24 and own["data"]["eval_mask_seed"] == 7  # read from run.json
    assert own["data"]["validation_fraction"] == 0.2 and other["data"]["validation_fraction"] == 0.05
    assert other["corpus"] == "shakespeare" and other["loss"] > own["loss"]  # another domain is harder
    assert "wikipedia" in capsys.readouterr().out
    # a domain tag changes no position: the run's own split still applies
    tagged = evaluate(EvaluateArguments(checkpoint=str(folder), corpus=["wiki=wikipedia"]))
    assert tagged["rows"][0]["loss"] == own["loss"]
    # another masking seed scores other positions
    reseeded = evaluate(EvaluateArguments(checkpoint=str(folder), corpus=["wikipedia"], eval_mask_seed=8))
    assert reseeded["rows"][0]["loss"] != own["loss"]
    # the whole corpus covers the training documents too
    everything = evaluate(EvaluateArguments(checkpoint=str(folder), corpus=["wikipedia"], split="all"))
    assert everything["rows"][0]["positions"] > own["positions"]
    # the entropy of the softened predictions rises with tau towards ln V, and the loss is unchanged
    assert main(["evaluate", str(folder), "--corpus", "wikipedia", "--temperatures", "0.5", "1", "4"]) == 0
    assert "H@4.0" in capsys.readouterr().out
    softened = evaluate(EvaluateArguments(checkpoint=str(folder), corpus=["wikipedia"], temperatures=[0.5, 1.0, 4.0]))
    row = softened["rows"][0]
    assert row["loss"] == own["loss"]
    assert 0 < row["entropy"]["0.5"] < row["entropy"]["1.0"] < row["entropy"]["4.0"] < math.log(512)


def test_bad_input_is_a_clear_error(run, tmp_path):
    folder, _summary = run
    with pytest.raises(KinheritError, match="not a model checkpoint folder"):
        evaluate(EvaluateArguments(checkpoint=str(tmp_path), corpus=["wikipedia"]))
    with pytest.raises(KinheritError, match="--split must be one of validation, train, all"):
        EvaluateArguments(checkpoint=str(folder), corpus=["wikipedia"], split="test")
    with pytest.raises(KinheritError, match="has no validation positions"):
        evaluate(EvaluateArguments(checkpoint=str(folder), corpus=["wikipedia"], validation_fraction=0.0))
    assert main(["evaluate", str(folder)]) == 2  # no corpus
