"""Run under torchrun with 2 processes; prints one JSON line per case on rank 0.

- FSDP2: the KI loss and its gradients with a sharded student (and, by option, sharded teachers) against
  one unsharded copy that sees the whole global batch.
- A teacher read straight into shards (`--teacher_placement shard`): the same outputs as the whole
  checkpoint, while each process holds only its share of the weights.
- DDP with a non-finite loss on one process only: both processes skip the batch.
- A teacher with another tokenizer: its shares of aligned positions and mapped mass are over both processes
  counts, not the main process's alone.
- Evaluation of 3 validation blocks over 2 processes, one block per forward pass, with a sharded student and a
  sharded teacher under the adaptive schedule (which scores the teacher too): the parts differ in size, yet
  every process joins every gather, and the loss is the whole set's.

Usage: torchrun --nproc_per_node 2 parallel_worker.py TOKENIZER_DIR OUTPUT_DIR
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import TrainingArguments

from kinherit.core.errors import KinheritError
from kinherit.data import BlockCollator, load_tokenizer
from kinherit.data.token_text import Bridge
from kinherit.inheritance.teachers import TeacherSet, freeze
from kinherit.models.lm import validation_loss
from kinherit.models.loading import load_model
from kinherit.models.parts import reshard_model, shard_layers
from kinherit.training.cross_teachers import CrossTokenizerTeachers
from kinherit.training.load_teachers import load_teacher
from kinherit.training.options import InheritanceArguments
from kinherit.training.trainer import InheritanceTrainer


def batch_for(kind: str, tokenizer, processes: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, len(tokenizer), (2 * processes, 32), generator=generator)
    labels = ids.clone()
    if kind == "masked":
        chosen = torch.rand(ids.shape, generator=generator) < 0.15
        labels[~chosen] = -100
        ids = ids.masked_fill(chosen, tokenizer.mask_token_id)
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def run_case(preset: str, teacher_preset: str, placement: str, tokenizer, args) -> dict:
    rank, processes = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    student = load_model(preset, tokenizer, 32)
    teacher = load_model(teacher_preset, tokenizer, 32)
    reference, reference_teacher = load_model(preset, tokenizer, 32), load_model(teacher_preset, tokenizer, 32)
    reference.load_state_dict(student.state_dict())
    for model in (student, reference):  # dropout would draw different masks in the two computations
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    reference_teacher.load_state_dict(teacher.state_dict())
    inherit = InheritanceArguments(inherit_steps=10, temperature=2.0, loss_kernels="eager", teacher_placement=placement)
    kind = "masked" if preset.startswith("roberta") else "causal"
    batch = batch_for(kind, tokenizer, processes)

    whole = InheritanceTrainer(model=reference, args=args, teachers=TeacherSet([freeze(reference_teacher)]),
                               inherit_args=InheritanceArguments(inherit_steps=10, temperature=2.0,
                                                                 loss_kernels="eager"), vocab_size=len(tokenizer))
    whole.state.global_step = 3  # alpha = 0.7: both terms count
    reference.train()
    # every process holds the whole batch here, so the global count is processes x the batch's own
    whole_loss = whole.compute_loss(reference, batch, num_items_in_batch=whole._get_num_items_in_batch([batch], "cpu"))
    whole_loss.backward()

    shard_layers(student)
    sharded = InheritanceTrainer(model=student, args=args, teachers=TeacherSet([freeze(teacher)]),
                                 inherit_args=inherit, vocab_size=len(tokenizer))
    sharded.state.global_step = 3
    student.train()
    mine = {k: v[2 * rank:2 * rank + 2] for k, v in batch.items()}
    loss = sharded.compute_loss(student, mine, num_items_in_batch=sharded._get_num_items_in_batch([mine], "cpu"))
    loss.backward()
    losses = [torch.zeros(()) for _ in range(processes)]
    dist.all_gather(losses, loss.detach())
    gaps, scale, sharded_params = {}, 0.0, 0
    reference_params = dict(reference.named_parameters())
    for name, parameter in student.named_parameters():
        grad = parameter.grad
        if hasattr(grad, "full_tensor"):
            sharded_params += 1
            grad = grad.full_tensor()
        expected = reference_params[name].grad
        gaps[name] = (grad - expected).abs().max().item()
        scale = max(scale, expected.abs().max().item())
    # evaluation runs through the sharded model (its root gathers the embeddings and head) and agrees
    ids = batch["input_ids"].tolist()
    blocks = Dataset.from_dict({"input_ids": ids, "index": list(range(len(ids)))})
    sharded.eval_collator = whole.eval_collator = BlockCollator(tokenizer, kind == "masked", seed=5)
    eval_sharded = sharded.validation_loss(student, blocks)[0]
    eval_whole = whole.validation_loss(reference, blocks)[0]
    # gaps relative to the largest gradient entry: some gradients are zero in exact arithmetic (key biases)
    return {"preset": preset, "eval_loss": eval_sharded, "whole_eval_loss": eval_whole, "placement": placement,
            "loss": float(sum(losses) / processes),
            "whole_loss": whole_loss.item(), "max_relative_grad_gap": max(gaps.values()) / scale,
            "sharded_parameters": sharded_params, "parameters": len(gaps),
            "teacher_sharded": all(hasattr(p, "full_tensor") for p in teacher.parameters())}


def sharded_load_case(preset: str, tokenizer, output_dir: str) -> dict:
    """A checkpoint loaded shard by shard against the same checkpoint loaded whole."""
    path = os.path.join(output_dir, f"saved-{preset}")
    if dist.get_rank() == 0:
        torch.manual_seed(2)
        load_model(preset, tokenizer, 32).save_pretrained(path)
        tokenizer.save_pretrained(path)
    dist.barrier()
    kind = "masked" if preset.startswith("roberta") else "causal"
    sharded, _ = load_teacher(path, tokenizer, kind, sharded=True)
    whole, _ = load_teacher(path, tokenizer, kind)
    ids = batch_for(kind, tokenizer, 1)["input_ids"]
    with torch.no_grad():
        gap = (sharded(input_ids=ids).logits - whole(input_ids=ids).logits).abs().max().item()
    reshard_model(sharded)
    return {"preset": preset, "max_logit_gap": gap, "frozen": not any(p.requires_grad for p in sharded.parameters()),
            "local_elements": sum(p.to_local().numel() for p in sharded.parameters()),
            "elements": sum(p.numel() for p in whole.parameters())}


def nonfinite_case(policy: str, tokenizer, args) -> dict:
    """DDP; the teacher gives NaN on process 1 only: both skip, then a healthy step syncs as usual."""
    rank = dist.get_rank()
    torch.manual_seed(0)
    student = load_model("llama-1x64", tokenizer, 32)
    teacher = freeze(load_model("llama-1x64", tokenizer, 32))
    head = teacher.get_output_embeddings().weight
    healthy = head.detach().clone()
    if rank == 1:
        with torch.no_grad():
            head[:, 0] = float("nan")
    wrapped = torch.nn.parallel.DistributedDataParallel(student)
    trainer = InheritanceTrainer(model=student, args=args, teachers=TeacherSet([teacher]),
                                 inherit_args=InheritanceArguments(inherit_steps=10, nonfinite=policy,
                                                                   loss_kernels="eager"), vocab_size=len(tokenizer))
    student.train()
    ids = torch.randint(5, len(tokenizer), (2, 32), generator=torch.Generator().manual_seed(rank))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    count = trainer._get_num_items_in_batch([batch], "cpu")
    try:
        loss = trainer.compute_loss(wrapped, batch, num_items_in_batch=count)
    except KinheritError as error:
        return {"policy": policy, "rank": rank, "error": str(error)}
    loss.backward()
    zero_grads = all(p.grad is not None and not p.grad.any() for p in student.parameters())
    with torch.no_grad():
        head.copy_(healthy)
    student.zero_grad()
    loss = trainer.compute_loss(wrapped, batch, num_items_in_batch=count)
    loss.backward()  # DDP would raise here if the skipped step had left its reduction unfinished
    grad = student.get_input_embeddings().weight.grad.clone()
    other = [torch.zeros_like(grad) for _ in range(2)]
    dist.all_gather(other, grad)
    return {"policy": policy, "rank": rank, "skipped": trainer.counters.skipped_batches, "zero_grads": zero_grads,
            "synchronised": bool(torch.equal(other[0], other[1]) and grad.abs().sum() > 0),
            "loss": loss.item()}


def uneven_validation_case(tokenizer, output_dir: str) -> dict:
    """Validation parts of 2 and 1 blocks, one per forward pass, through a sharded student and teacher."""
    torch.manual_seed(4)
    student, teacher = load_model("llama-2x64", tokenizer, 32), load_model("llama-1x64", tokenizer, 32)
    whole_student, whole_teacher = load_model("llama-2x64", tokenizer, 32), load_model("llama-1x64", tokenizer, 32)
    whole_student.load_state_dict(student.state_dict())
    whole_teacher.load_state_dict(teacher.state_dict())
    ids = torch.randint(5, len(tokenizer), (3, 32), generator=torch.Generator().manual_seed(3)).tolist()
    blocks = Dataset.from_dict({"input_ids": ids, "index": [0, 1, 2]})
    args = TrainingArguments(output_dir, report_to="none", use_cpu=True, per_device_eval_batch_size=1)
    inherit = InheritanceArguments(inherit_schedule="adaptive", teacher_placement="shard", loss_kernels="eager")
    shard_layers(student)
    sharded = InheritanceTrainer(model=student, args=args, teachers=TeacherSet([freeze(teacher)]),
                                 inherit_args=inherit, vocab_size=len(tokenizer),
                                 eval_collator=BlockCollator(tokenizer, False, seed=5))
    metrics = sharded.evaluate(blocks)
    collator = BlockCollator(tokenizer, False, seed=5)
    whole = [validation_loss(m, blocks, collator, 1, None, len(tokenizer), "causal")[0]
             for m in (whole_student, whole_teacher)]
    return {"eval_loss": metrics["eval_loss"], "teacher_loss": sharded.teacher_val_losses[0],
            "whole_eval_loss": whole[0], "whole_teacher_loss": whole[1], "positions": metrics["eval_positions"]}


def cross_counts_case(tokenizer) -> dict:
    """Each process counts its own batches (here: 10 taught, 8 aligned, mass 8 on rank 0; 30, 12, 6 on rank 1)."""
    teacher = load_model("llama-1x64", tokenizer, 32)
    bridged = CrossTokenizerTeachers([teacher], [Bridge.build(tokenizer, tokenizer, teacher.config.vocab_size)], "map")
    bridged.taught, bridged.aligned, bridged.mass = [(10, 8, 8.0), (30, 12, 6.0)][dist.get_rank()]
    return bridged.report()


def main() -> None:
    tokenizer = load_tokenizer(sys.argv[1])
    args = TrainingArguments(sys.argv[2], report_to="none", use_cpu=True)
    for preset, teacher_preset, placement in [("llama-2x64", "llama-1x64", "replicate"),
                                              ("llama-2x64", "llama-1x64", "shard"),
                                              ("roberta-2x64", "roberta-1x64", "shard")]:
        result = run_case(preset, teacher_preset, placement, tokenizer, args)
        if dist.get_rank() == 0:
            print("RESULT " + json.dumps(result), flush=True)
    for preset in ("llama-2x64", "roberta-2x64"):
        loaded = [None, None]
        dist.all_gather_object(loaded, sharded_load_case(preset, tokenizer, sys.argv[2]))
        if dist.get_rank() == 0:
            print("LOADED " + json.dumps(loaded), flush=True)
    results = [None, None]
    dist.all_gather_object(results, nonfinite_case("skip", tokenizer, args))
    if dist.get_rank() == 0:
        print("NONFINITE " + json.dumps(results), flush=True)
    counts = cross_counts_case(tokenizer)
    if dist.get_rank() == 0:
        print("CROSS " + json.dumps(counts), flush=True)
    uneven = uneven_validation_case(tokenizer, sys.argv[2])
    if dist.get_rank() == 0:
        print("UNEVEN " + json.dumps(uneven), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    # Every result is printed by now. This harness's interpreter teardown (FSDP2- and DDP-wrapped modules
    # made by hand, several trainers in one process) aborts about one time in eight with "terminate called
    # without an active exception"; launched `kinherit pretrain` processes have not shown it. Leave without it.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
