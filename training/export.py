"""``nightowl export-model DIR [--gguf]``: merge the active LoRA into 16-bit weights, verified.

Silent LoRA loss on merge is a known failure, so the merge is checked twice before the folder is
published: (1) in float32 the merged model's logits must match the adapter model's (the error must
be far below the adapter's own effect on the logits), and (2) the saved 16-bit folder, reloaded,
must agree with the adapter model's next-token predictions on a few prompts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data.files import atomic_path
from training.errors import TrainingError

VERIFY_PROMPTS = [
    "What can you help me with?",
    "How do I retrain the bot?",
    "Write one sentence about the sea.",
]
GGUF_HELP = ("GGUF export is built in only for the embedded model (its source GGUF supplies the "
             "tokenizer metadata). For other models use llama.cpp's converter: "
             "`python convert_hf_to_gguf.py DIR --outtype f16` on the folder that "
             "`nightowl export-model DIR` writes.")


def _logits(model: Any, batch: list[Any]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [model(input_ids=ids).logits[0].float() for ids in batch]


def export_merged(model_path: str, adapter_path: Path, out_dir: Path, *,
                  say: Callable[[str], Any] = print,
                  prompts: list[str] | None = None) -> dict[str, Any]:
    """Merge ``adapter_path`` into ``model_path`` and save 16-bit weights to ``out_dir``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.template import training_template

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise TrainingError(f"{out_dir} exists and is not empty; choose a new folder.")
    tok = AutoTokenizer.from_pretrained(model_path)
    template = training_template(tok)
    batch = []
    for p in prompts or VERIFY_PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": p}], chat_template=template,
                                       tokenize=False, add_generation_prompt=True)
        batch.append(tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"])
    say(f"Loading {model_path} with adapter {adapter_path}...")
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_path))
    model.eval()
    with torch.no_grad():
        # continue each prompt greedily so the check also covers the adapter's own answer
        seqs = [model.generate(input_ids=ids, max_new_tokens=16, do_sample=False,
                               pad_token_id=tok.pad_token_id or tok.eos_token_id)
                for ids in batch]
    ref = _logits(model, seqs)
    with model.disable_adapter():
        plain = _logits(model, seqs)
    effect = max(float((a - b).abs().max()) for a, b in zip(ref, plain, strict=True))
    merged = model.merge_and_unload()
    merged_logits = _logits(merged, seqs)
    err32 = max(float((a - b).abs().max()) for a, b in zip(ref, merged_logits, strict=True))
    if effect > 1e-4 and err32 > 0.05 * effect:
        raise TrainingError(f"merge verification failed: merged logits differ from the adapter's "
                            f"by {err32:.4g} while the adapter changes them by {effect:.4g} "
                            "(the LoRA was not merged correctly); nothing was written.")
    dtype = torch.bfloat16
    merged = merged.to(dtype)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype)
        reloaded.eval()
        agree = total = 0
        for r, m in zip(ref, _logits(reloaded, seqs), strict=True):
            agree += int((r.argmax(-1) == m.argmax(-1)).sum())
            total += r.shape[0]
        agreement = agree / max(total, 1)
        if agreement < 0.9:
            raise TrainingError(f"merge verification failed: the saved 16-bit model agrees with "
                                f"the adapter on only {agreement:.0%} of next tokens; nothing "
                                "was written.")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report = {"adapter_effect": effect, "fp32_merge_error": err32,
              "bf16_top1_agreement": agreement, "tokens_checked": total, "dtype": "bfloat16",
              "out_dir": str(out_dir)}
    say(f"Merged model written to {out_dir} (verified: fp32 merge error {err32:.2g} vs adapter "
        f"effect {effect:.2g}; 16-bit next-token agreement {agreement:.1%} on {total} tokens).")
    return report


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's q/k row order (interleaved rotary halves), as convert_hf_to_gguf.py does."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def export_gguf(merged_dir: Path, out_file: Path, source_gguf: Path, *,
                say: Callable[[str], Any] = print, verify: bool = True) -> dict[str, Any]:
    """Write a merged llama-architecture folder as an F16 GGUF, reusing ``source_gguf``'s
    metadata (tokenizer, chat template, hyper-parameters); verified by reloading it."""
    import gguf
    import numpy as np
    import torch
    from safetensors.torch import load_file

    reader = gguf.GGUFReader(str(source_gguf))
    arch = str(reader.fields["general.architecture"].contents())
    if arch != "llama":
        raise TrainingError(f"GGUF export supports llama-architecture models, not {arch!r}. "
                            + GGUF_HELP)
    n_head = int(reader.fields["llama.attention.head_count"].contents())
    n_kv = int(reader.fields["llama.attention.head_count_kv"].contents())
    n_blocks = int(reader.fields["llama.block_count"].contents())
    state: dict[str, Any] = {}
    for f in sorted(Path(merged_dir).glob("*.safetensors")):
        state.update(load_file(str(f)))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)
    by_gguf: dict[str, tuple[str, Any]] = {}
    for hf_name, tensor in state.items():
        g = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if g is not None:
            by_gguf[g] = (hf_name, tensor)
    out_file = Path(out_file)
    with atomic_path(out_file) as tmp:  # replaces out_file only once written and verified
        writer = gguf.GGUFWriter(str(tmp), arch)
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF.") \
                    or field.name in ("general.file_type", "general.quantization_version"):
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        for t in reader.tensors:
            if t.name not in by_gguf:
                raise TrainingError(f"the merged model has no tensor for {t.name}; "
                                    "it does not match the embedded model's layout.")
            hf_name, tensor = by_gguf[t.name]
            arr = tensor.to(torch.float32).numpy()
            if hf_name.endswith("q_proj.weight"):
                arr = _permute(arr, n_head)
            elif hf_name.endswith("k_proj.weight"):
                arr = _permute(arr, n_kv)
            writer.add_tensor(t.name, arr.astype(np.float32 if arr.ndim == 1 else np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        report: dict[str, Any] = {"gguf": str(out_file), "tensors": len(reader.tensors),
                                  "dtype": "F16"}
        if verify:
            report["gguf_top1_agreement"] = _verify_gguf(merged_dir, tmp)
            if report["gguf_top1_agreement"] < 0.9:
                raise TrainingError("GGUF verification failed: the file agrees with the merged "
                                    f"model on only {report['gguf_top1_agreement']:.0%} of next "
                                    "tokens; nothing was written.")
    say(f"GGUF written to {out_file} (F16"
        + (f", next-token agreement {report['gguf_top1_agreement']:.1%} with the merged model)"
           if verify else ")"))
    return report


def _verify_gguf(merged_dir: Path, gguf_file: Path) -> float:
    """Load the GGUF back with transformers and compare next-token predictions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    staging = Path(tempfile.mkdtemp(prefix=".gguf-check-", dir=gguf_file.parent))
    try:
        link = staging / "model.gguf"
        os.link(gguf_file, link) if hasattr(os, "link") else shutil.copy(gguf_file, link)
        loaded = AutoModelForCausalLM.from_pretrained(staging, gguf_file="model.gguf",
                                                      dtype=torch.float32)
        agree = total = 0
        for p in VERIFY_PROMPTS:
            ids = tok(p, return_tensors="pt")["input_ids"]
            a, b = _logits(merged, [ids])[0], _logits(loaded, [ids])[0]
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a.shape[0]
        return agree / max(total, 1)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
