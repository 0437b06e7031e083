"""Checks on LoRA adapter folders before any backend loads them (refuse early, keep the old one)."""

from __future__ import annotations

import json
from pathlib import Path

from llm.errors import AdapterError

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def validate_adapter_dir(path: Path) -> Path:
    """Return the resolved adapter folder, or raise AdapterError saying what is wrong.

    A valid folder (``PeftModel.save_pretrained`` output) holds ``adapter_config.json`` (JSON
    with a ``peft_type``) and ``adapter_model.safetensors`` whose header is readable and lists
    LoRA tensors.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise AdapterError(f"adapter directory {path} does not exist; the previous adapter is "
                           "kept. Check `nightowl adapters` for available versions.")
    cfg_file = path / "adapter_config.json"
    try:
        conf = json.loads(cfg_file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AdapterError(f"{path} has no adapter_config.json: not a peft adapter folder; "
                           "the previous adapter is kept.") from exc
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{cfg_file} is corrupt ({exc}); the previous adapter is kept.") from exc
    if not isinstance(conf, dict) or "peft_type" not in conf:
        raise AdapterError(f"{cfg_file} is not a peft adapter config (no peft_type); the "
                           "previous adapter is kept.")
    weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise AdapterError(f"{path} has no adapter weights ({' or '.join(WEIGHT_FILES)}); the "
                           "previous adapter is kept.")
    if weights.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                keys = list(f.keys())
        except Exception as exc:
            raise AdapterError(f"{weights} is corrupt ({exc}); the previous adapter is "
                               "kept.") from exc
        if not any("lora_" in k for k in keys):
            raise AdapterError(f"{weights} holds no LoRA tensors; the previous adapter is kept.")
    return path.resolve()
