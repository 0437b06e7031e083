"""Loading the local model: tokenizers, weights, dtype and device, CPU tuning. Offline only.

``load_model`` runs on the worker thread (see :mod:`llm.local.worker`: the thread that loads the
model is the one that runs it). NightOwl never downloads at run time: ``[model] name`` is the
embedded model, a local ``save_pretrained`` folder, or a hub id already in the HF cache.
``[model] dtype = "auto"`` picks bf16 where the CPU/GPU computes it natively, else fp32 (fp16 on
a GPU without bf16). ``[model] threads = 0`` uses every core; on a machine shared with other busy
processes one thread can be faster (no spin-waiting).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm.base import ChatMessage
from llm.config import ModelConfig
from llm.errors import ModelError
from llm.local.prepack import PackedWeights

log = logging.getLogger("nightowl.llm")


@dataclass
class Loaded:
    """The loaded model and what the engine needs to know about it."""

    torch: Any  # the torch module (imported on the worker thread)
    model: Any  # the transformers model (eval mode)
    tokenizer: Any  # the worker thread's tokenizer
    count_tokenizer: Any  # the event loop's (a tokenizer is not shared between threads)
    eos: frozenset[int]  # token ids that end an answer
    device: str
    dtype: Any
    threads: int  # torch threads of the worker
    context_length: int  # [model] context_length, capped by the model's position embeddings
    packed: PackedWeights | None  # CPU: the prepacked linear layers (None: plain F.linear)


def render(tok: Any, messages: Sequence[ChatMessage]) -> list[int]:
    """The prompt's token ids: the chat template with the generation prompt."""
    text = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return list(tok.encode(text, add_special_tokens=False))


def load_model(cfg: ModelConfig, storage_dir: Path, say: Callable[[str], None]) -> Loaded:
    """Load the tokenizers and the model (and prepack it on the CPU); raise ModelError saying
    how to fix what is missing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.embedded import resolve_model_path
    from llm.local.attention import register
    from llm.local.malloc import keep_freed_memory
    from llm.local.prepack import prepack_linears

    cuda = torch.cuda.is_available()
    quant = "4-bit" if cfg.load_in_4bit else "8-bit" if cfg.load_in_8bit else ""
    if quant and not cuda:
        raise ModelError(f"[model] load_in_{quant[0]}bit needs a CUDA GPU (bitsandbytes), and "
                         "this machine has none. Set load_in_4bit = false and "
                         "load_in_8bit = false to run on the CPU in bf16/fp32.")
    device = ("cuda" if cuda else "cpu") if cfg.device == "auto" else cfg.device
    dtype = _pick_dtype(cfg, torch, device)
    threads = cfg.threads or os.cpu_count() or 1
    if device == "cpu":
        torch.set_num_threads(threads)
    path = resolve_model_path(cfg.name, storage_dir, say)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True,
                              "attn_implementation": register()}
    if quant:
        try:
            from transformers import BitsAndBytesConfig
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=cfg.load_in_4bit, load_in_8bit=cfg.load_in_8bit,
                bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
            kwargs["device_map"] = {"": device}
        except ImportError as exc:
            raise ModelError("4/8-bit loading needs bitsandbytes: "
                             "pip install 'nightowl[gpu]'") from exc
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        count_tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ModelError(
            f"cannot load model {cfg.name!r} offline ({type(exc).__name__}: {exc}). "
            "NightOwl never downloads at run time: set [model] name to a local folder saved "
            "with save_pretrained (config.json, *.safetensors, tokenizer files), or fetch it "
            f"once with `huggingface-cli download {cfg.name}` into the HF cache "
            f"({hf_home}), or use name = \"embedded\".") from exc
    if not quant:
        model.to(device)
    model.eval()
    if device == "cpu" and cfg.cpu_keep_freed_memory:
        keep_freed_memory()
    packed = None
    if device == "cpu" and cfg.cpu_prepack:
        packed = prepack_linears(model, batch_hint=cfg.max_batch_size)
        log.info("prepacked %d linear layers for oneDNN", len(packed or []))
    max_pos = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    context = min(cfg.context_length, max_pos) if max_pos else cfg.context_length
    eos = model.generation_config.eos_token_id
    stop_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        stop_ids.add(int(tok.eos_token_id))
    return Loaded(torch=torch, model=model, tokenizer=tok, count_tokenizer=count_tok,
                  eos=frozenset(stop_ids), device=device, dtype=dtype, threads=threads,
                  context_length=context, packed=packed)


def _pick_dtype(cfg: ModelConfig, torch: Any, device: str) -> Any:
    """``[model] dtype``, or for "auto": bf16 where the CPU/GPU computes it natively."""
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        bf16 = False
    return torch.bfloat16 if bf16 else torch.float32
