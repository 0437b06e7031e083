"""Does the learning loop learn what was taught and keep the rest? Prints ONE JSON line.

A fixed scenario on the embedded model (bench/data/learning/): three made-up facts taught by 24
corrections of the bot's real wrong answers (8 phrasings each), 6 other wrong answers 👎'd without
correction, 6 general answers 👍'd. Each method runs the product's own cycle (``run_cycle``: the
dataset, the training child, the gate) on a fresh storage dir seeded with that day, then the tuned
adapter and the base model answer, greedily and in the same batches:

* probes: 9 questions in phrasings never taught; right = the answer holds the fact's key;
* general: 12 unrelated questions; changed = ``training.behaviour.changed`` against the base
  answer; leaked = a fact's distinctive name or number that the base answer did not hold;
* regression: the gate's own 12 questions (``training/regression/``), answered the way the gate
  answers them (one list, the training child's thread count), so ``regression_changed`` must equal
  the gate's ``gate_changed`` (``gate_agrees``); the two question sets share no question, and
  each is a sample of 12: a recipe's count differs between them;
* disliked: the 6 👎'd questions; still given = word similarity to the 👎'd answer >= 0.8;
* the gate's regression-loss change, its decision, and the wall time of the cycle.

The default meets the target when the gate promoted it, at least 8 of 9 probes are right, at
most 1 of the 12 general answers changed, and the cycle took at most 600 s.

    .venv/bin/python bench/learning.py [--methods default,no-replay,sft-replay] [--storage DIR]
        [--set KEY=VALUE ...]   # [training] overrides for every method, e.g. --set min_steps=40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "bench" / "data" / "learning"
# method -> [training] overrides on top of the defaults
METHODS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-replay": {"base_replay": 0},
    "sft-replay": {"base_replay_loss": "sft"},
    "kto": {"method": "kto", "pref_learning_rate": 5e-4, "pref_beta": 0.1},
    "sft+dpo": {"method": "sft+dpo"},
    "old-defaults": {"lora_alpha": 16, "learning_rate": 2e-4, "lr_scheduler": "linear",
                     "warmup_steps": 5, "batch_size": 2, "grad_accum": 4, "min_steps": 0,
                     "base_replay": 0},
}
TARGET = {"probes_min": 8, "general_changed_max": 1, "wall_s_max": 600}


def _jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (DATA / name).read_text(encoding="utf-8").splitlines()
            if x.strip()]


async def _seed(store: Any) -> None:
    n = 0

    async def one(q: str, a: str, rating: int, correction: str | None = None) -> None:
        nonlocal n
        n += 1
        u = await store.ensure_user("terminal", f"b{n}", f"b{n}")
        conv = await store.active_conversation(u.id, "terminal", f"chat-{n}")
        qid = await store.add_message(conv, "user", q, status="pending")
        aid = await store.answer(qid, conv, a, model="m", adapter=None, latency_s=0.1,
                                 sources=[])
        await store.set_feedback(aid, u.id, rating)
        if correction is not None:
            await store.add_correction(aid, u.id, correction)
        await store.end_conversation(u.id, "terminal", f"chat-{n}")

    for c in _jsonl("corrections.jsonl"):
        await one(c["question"], c["answer"], -1, c["correction"])
    for f in _jsonl("feedback.jsonl"):
        await one(f["question"], f["answer"], int(f["rating"]))


def _evaluate(model_path: str, adapter: Path, system: str, threads: int) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training import behaviour
    from training.gate import contains_expected, generate_greedy, load_regression
    from training.template import training_template

    torch.set_num_threads(threads)  # the training child's decode path (its thread count)
    facts = json.loads((DATA / "facts.json").read_text(encoding="utf-8"))
    general = json.loads((DATA / "general.json").read_text(encoding="utf-8"))
    disliked = [f for f in _jsonl("feedback.jsonl") if f["rating"] == -1]
    tok = AutoTokenizer.from_pretrained(model_path)
    template = training_template(tok)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(base, str(adapter))

    def ask(questions: list[str]) -> list[str]:
        prompts = [[{"role": "system", "content": system}, {"role": "user", "content": q}]
                   for q in questions]
        return generate_greedy(model, tok, template, prompts, 40)

    probes = [(p, f["key"]) for f in facts for p in f["probes"]]
    probe_answers = ask([p for p, _ in probes])
    tuned_general = ask(general)
    tuned_disliked = ask([d["question"] for d in disliked])
    regression = load_regression()
    tuned_regression = ask(regression)  # one list, as the gate batches it
    with model.disable_adapter():
        base_general = ask(general)
        base_regression = ask(regression)
    distinctive = sorted({t for f in facts for t in f["distinctive"]})
    changed = [behaviour.changed(b, t) for b, t in zip(base_general, tuned_general, strict=True)]
    leaked = [any(contains_expected(t, d) and not contains_expected(b, d) for d in distinctive)
              for b, t in zip(base_general, tuned_general, strict=True)]
    still = [behaviour.similarity(d["answer"], a) >= 0.8
             for d, a in zip(disliked, tuned_disliked, strict=True)]
    reg_rows = behaviour.compare(regression, base_regression, tuned_regression)
    return {"probes_right": sum(contains_expected(a, k) for a, (_, k)
                                in zip(probe_answers, probes, strict=True)),
            "probes_total": len(probes), "general_changed": sum(changed),
            "general_leaked": sum(leaked), "general_total": len(general),
            "disliked_still_given": sum(still), "disliked_total": len(disliked),
            "regression_changed": sum(r.changed for r in reg_rows),
            "regression_total": len(reg_rows),
            "general_similarity": [round(behaviour.similarity(b, t), 2) for b, t
                                   in zip(base_general, tuned_general, strict=True)],
            "regression_similarity": [r.similarity for r in reg_rows],
            "changed_examples": [{"q": q, "base": b[:120], "tuned": t[:120]}
                                 for q, b, t, c in zip(general, base_general, tuned_general,
                                                       changed, strict=True) if c][:3]}


async def run_method(name: str, storage: Path, model_name: str,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from bot.config import Config
    from data.config import StorageConfig
    from data.store import Store
    from training.cycle import run_cycle
    from training.registry import Registry

    overrides = {f"training__{k}": v for k, v in {**METHODS[name], **(extra or {})}.items()}
    root = Path(tempfile.mkdtemp(prefix=f"bench-learning-{name}-", dir=storage))
    cfg = Config().replace(storage=StorageConfig(dir=str(root)), model__backend="fake",
                           model__name=model_name, **overrides)
    async with Store(root / "nightowl.db") as store:
        await _seed(store)
        started = time.perf_counter()
        result = await run_cycle(cfg, store, say=lambda s: None)
        wall = time.perf_counter() - started
    import os

    out: dict[str, Any] = {"status": result.status, "wall_s": round(wall, 1),
                           "loadavg_1m": round(os.getloadavg()[0], 1), "reasons": result.reasons}
    if result.version is None:
        return out
    scores = result.report.get("scores", {})
    reg = scores.get("regression", {})
    if reg.get("base", {}).get("loss") and reg.get("candidate", {}).get("loss"):
        b, c = reg["base"]["loss"], reg["candidate"]["loss"]
        out["regression_loss_change"] = round((c - b) / b, 4)
    out["gate_changed"] = scores.get("behaviour", {}).get("changed")
    out["steps"] = result.report.get("training", {}).get("steps")
    from llm.embedded import resolve_model_path
    from training.launch import training_threads

    model_path = resolve_model_path(model_name, cfg.storage.path, lambda s: None)
    out.update(await asyncio.to_thread(_evaluate, model_path,
                                       Registry(cfg.storage.path).path(result.version),
                                       cfg.model.system_prompt, training_threads(cfg)))
    # the same questions, rule and decode path as the gate: the two counts must agree
    out["gate_agrees"] = out["regression_changed"] == out["gate_changed"]
    return out


def _value(text: str) -> Any:
    """A ``--set`` value: JSON (numbers, lists, true/false) or else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="default,no-replay",
                    help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--storage", default=str(ROOT / "var" / "bench"))
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a [training] override for every method (JSON value), e.g. min_steps=40")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    storage = Path(args.storage)
    storage.mkdir(parents=True, exist_ok=True)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    extra = {k: _value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    results = {m: asyncio.run(run_method(m, storage, args.model, extra)) for m in names}
    d = results.get("default", {})
    met = None if not d else (d.get("status") == "promoted" and
                              d.get("probes_right", 0) >= TARGET["probes_min"] and
                              d.get("general_changed", 99) <= TARGET["general_changed_max"] and
                              d.get("wall_s", 1e9) <= TARGET["wall_s_max"])
    print(json.dumps({"bench": "learning", "model": args.model, "set": extra,
                      "methods": results,
                      "target": TARGET, "default_meets_target": met}, ensure_ascii=False))


if __name__ == "__main__":
    main()
