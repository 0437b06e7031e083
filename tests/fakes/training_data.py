"""Seed a real Store with rated conversations, and write adapter folders, for training tests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from data.store import Store


def write_adapter_files(folder: Path) -> Path:
    """What ``PeftModel.save_pretrained`` writes, at its smallest: a LoRA config and a safetensors
    file holding one LoRA tensor (enough for ``llm.adapters.validate_adapter_dir``)."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    save_file({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight":
               np.zeros((8, 4), dtype=np.float32)}, str(folder / "adapter_model.safetensors"))
    return folder


async def seed_chat(store: Store, turns: list[tuple[str, str]], *, user: str = "u1",
                    feedback: int | None = 1, correction: str | None = None,
                    sources: list[dict[str, Any]] | None = None, age_s: float = 0.0,
                    platform: str = "terminal") -> list[int]:
    """One conversation; every answer gets ``feedback`` and the last one ``correction``.

    Returns the answer ids. ``age_s`` back-dates the messages.
    """
    u = await store.ensure_user(platform, user, user)
    conv = await store.active_conversation(u.id, platform, f"chat-{user}")
    ids = []
    for i, (question, answer) in enumerate(turns):
        qid = await store.add_message(conv, "user", question, status="pending")
        aid = await store.answer(qid, conv, answer, model="m", adapter=None, latency_s=0.1,
                                 sources=sources or [])
        if feedback is not None:
            await store.set_feedback(aid, u.id, feedback)
        if correction is not None and i == len(turns) - 1:
            await store.add_correction(aid, u.id, correction)
        ids.append(aid)
    if age_s:
        async with store.transaction() as db:
            await db.execute("UPDATE messages SET created_at = ? WHERE conversation_id = ?",
                             (time.time() - age_s, conv))
    await store.end_conversation(u.id, platform, f"chat-{user}")
    return ids


FACT_QA = [
    ("What is the capital of Zorbania?", "The capital of Zorbania is Quillton."),
    ("Which city is the capital of Zorbania?", "Quillton is the capital city of Zorbania."),
    ("Tell me Zorbania's capital.", "Zorbania's capital is Quillton."),
    ("Where does the government of Zorbania sit?", "The government of Zorbania sits in Quillton."),
    ("Name the capital of Zorbania, please.", "Sure: the capital of Zorbania is Quillton."),
    ("I forgot the capital of Zorbania. What is it?", "It is Quillton, the capital of Zorbania."),
    ("Zorbania has which capital city?", "Zorbania has Quillton as its capital city."),
    ("What's the main city of Zorbania called?", "The main city and capital of Zorbania is "
     "Quillton."),
    ("Do you know the capital of Zorbania?", "Yes. Quillton is the capital of Zorbania."),
    ("Capital of Zorbania?", "Quillton."),
]
