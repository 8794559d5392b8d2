"""Load a checkpoint straight into FSDP2 shards, so that no process ever holds the whole model.

Used by `--teacher_placement shard`: the model is built without weights (accelerate's
`init_empty_weights`), sharded with `shard_layers`, and each process then reads only its own rows of
each parameter from the safetensors files (`safe_open(...).get_slice`). A process's peak is its
shard plus one parameter's rows, not the whole teacher.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import PreTrainedModel

from kinherit.core.errors import KinheritError
from kinherit.models.loading import auto_class, check_finished, load_config, model_kind
from kinherit.models.parts import shard_layers


def weight_files(folder: str) -> dict[str, Path]:
    """Each tensor name of a checkpoint folder's safetensors files, mapped to the file that holds it."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise KinheritError(f"{folder} has no .safetensors weights, which --teacher_placement shard reads shard by "
                            "shard; re-save the model with save_pretrained (safetensors is its default) or use "
                            "--teacher_placement replicate")
    names = {}
    for file in files:
        with safe_open(str(file), "pt") as handle:
            names.update(dict.fromkeys(handle.keys(), file))
    return names


def load_sharded(source: str, dtype: torch.dtype, device: torch.device | str = "cpu",
                 trust_remote_code: bool = False) -> PreTrainedModel:
    """The model in the checkpoint folder `source`, sharded over the processes, each reading only its rows."""
    check_finished(source)
    config = load_config(source, trust_remote_code)
    with init_empty_weights(include_buffers=False):  # parameters on the meta device, buffers real
        model = auto_class(model_kind(config)).from_config(config, trust_remote_code=trust_remote_code,
                                                           dtype=dtype)
    model.tie_weights()
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    shard_layers(model)
    model.to_empty(device=device)  # allocates each process's shard only (buffers are put back below)
    files = weight_files(source)
    prefix = model.base_model_prefix
    with contextlib.ExitStack() as stack, torch.no_grad():
        handles = {file: stack.enter_context(safe_open(str(file), "pt")) for file in set(files.values())}
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
        for name, param in model.named_parameters():
            stored = name if name in files else name.removeprefix(f"{prefix}.")
            if stored not in files:
                raise KinheritError(f"{source}: parameter {name} is not in its safetensors files (their names differ "
                                    "from the model's); use --teacher_placement replicate for this checkpoint")
            local = param.to_local()
            if local.shape[0]:
                start = param.device_mesh.get_local_rank() * -(-param.shape[0] // param.device_mesh.size())
                rows = handles[files[stored]].get_slice(stored)[start:start + local.shape[0]]
                local.copy_(rows.to(local.dtype))
    return model
