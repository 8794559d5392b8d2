"""`kinherit import-gguf`: a GGUF file (the llama.cpp format most small open models are shared in) as a plain
checkpoint folder of safetensors weights and an HF tokenizer, which every kinherit command reads as a teacher.

transformers reads the file and dequantizes its weights (`from_pretrained(folder, gguf_file=...)`, with the
`gguf` package); the model is then copied into an unquantized model of the same configuration and saved.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kinherit.core.atomic import staging_path
from kinherit.core.errors import KinheritError


def import_gguf(path: str | os.PathLike, output: str | os.PathLike) -> dict[str, Any]:
    """Write the model and tokenizer of the GGUF file `path` to the new folder `output`; returns what was written."""
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as error:
        raise KinheritError("reading a GGUF file needs the gguf package: pip install gguf") from error
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, target = Path(path), Path(output)
    if not source.is_file() or source.suffix != ".gguf":
        raise KinheritError(f"{source} is not a .gguf file")
    if target.exists():
        raise KinheritError(f"{target} exists; give a new folder for the imported model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        quantized = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    except (OSError, ValueError, KeyError) as error:
        raise KinheritError(f"transformers could not read {source}: {str(error).splitlines()[0]}") from error
    config = quantized.config
    config.quantization_config = None
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    staging = staging_path(target)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    os.replace(staging, target)  # a folder that exists is complete
    return {"output": str(target), "model_type": config.model_type, "parameters": model.num_parameters(),
            "vocab_size": len(tokenizer)}
