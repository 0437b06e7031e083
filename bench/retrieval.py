"""Retrieval benchmark: prints ONE JSON line.

1. Ingests the sample guide and the evaluation documents (tests/data/rag/docs) and measures
   recall@1, recall@3 and MRR over tests/data/rag/eval.jsonl (a hit is a passage from the expected
   source whose section contains the expected section).
2. Ingests the Portuguese and mixed notes (tests/data/kb_pt) next to them and measures the same per
   language over tests/data/retrieval_eval_pt.jsonl (a hit is a passage from the expected note):
   ``pt_*`` for the Portuguese questions, ``en_*`` for the English ones. ``unrelated_answered`` is
   how many of ``UNRELATED`` (off-topic questions) got any passage: it should stay 0.
3. Fills the store with generated inventory records up to ``--chunks`` chunks (default 10,000)
   and measures ingest throughput (filler chunks per second, embedding included), query latency
   p50/p95 (``Knowledge.search``, embedding included) and the recall figures again with the
   distractors (``*_with_filler``).

``--sweep`` instead runs step 1 and 2 once and evaluates a grid of fusion settings
(``keyword_weight`` x ``min_keyword_score``) on both sets; the line holds one entry per setting.

    .venv/bin/python bench/retrieval.py [--chunks 10000] [--embedding-model embedded] [--sweep]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = ROOT / "tests" / "data" / "rag"
KB_PT = ROOT / "tests" / "data" / "kb_pt"
EVAL_PT = ROOT / "tests" / "data" / "retrieval_eval_pt.jsonl"
UNRELATED = [
    "What is the capital of France?", "How do I bake sourdough bread?",
    "Who won the football world cup in 1998?", "How tall is Mount Everest?",
    "Qual é a capital da Argentina?", "Como faço um bolo de cenoura com cobertura?",
    "Quem ganhou a copa do mundo de 2002?", "Que horas abre o mercado municipal no domingo?",
    "Quanto custa uma passagem de ônibus para o Rio?", "Qual é a melhor praia de Santa Catarina?",
]
PRODUCTS = """mug bowl lamp chair desk shelf kettle blender toaster pillow blanket curtain rug
mirror vase clock frame basket candle towel jar tray stool bench cabinet drawer hook bin crate
""".split()
ADJ = "blue red green white black oak steel ceramic glass linen wool bamboo copper matte".split()
CITIES = "Lisbon Porto Leeds Lyon Gdansk Austin Denver Osaka Perth Quito Tunis Oslo".split()
NAMES = "Silva Okafor Jensen Moreau Novak Ito Kaur Haddad Rossi Park Alves Brandt".split()
SWEEP_WEIGHTS = (0.5, 1.0, 1.5, 2.0, 3.0)
SWEEP_MIN_KW = (0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9)

Got = list[tuple[dict[str, str], list[tuple[str, str]]]]


def filler(folder: Path, chunks: int, seed: int = 7) -> None:
    """Inventory records of a fictional shop: files of 20 sections, one section = one chunk.

    Realistic distractors (~60-110 tokens each) that share everyday words with the questions
    (delivery, audit, schedule, team) without answering them.
    """
    rng = random.Random(seed)
    per_file = 20
    for f in range((chunks + per_file - 1) // per_file):
        parts = [f"# Inventory book {f}"]
        for _ in range(min(per_file, chunks - f * per_file)):
            sku = f"SKU-{rng.randint(10000, 99999)}"
            item = f"{rng.choice(ADJ)} {rng.choice(ADJ)} {rng.choice(PRODUCTS)}"
            units, low = rng.randint(5, 900), rng.randint(5, 60)
            city, who = rng.choice(CITIES), rng.choice(NAMES)
            day = rng.choice(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"])
            text = (f"Warehouse {rng.choice('ABCDE')} shelf {rng.randint(1, 40)} holds {units} "
                    f"units of the {item} ({sku}). The supplier in {city} delivers every {day}; "
                    f"reorder when stock falls below {low}. Last stock audit on "
                    f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} by {who}. "
                    f"Returns of damaged units go to the {rng.choice(CITIES)} depot within "
                    f"{rng.randint(7, 30)} days, with the packing slip.")
            parts.append(f"## {sku} {item}\n\n{text}")
        (folder / f"inventory-{f:04d}.md").write_text("\n\n".join(parts), encoding="utf-8")


def evaluate(results: Got, prefix: str = "") -> dict[str, float]:
    r1 = r3 = rr = 0.0
    for item, got in results:
        ranks = [i for i, (src, sec) in enumerate(got, 1) if src == item["source"]
                 and item.get("section", "").lower() in sec.lower()]
        first = ranks[0] if ranks else None
        r1 += first == 1
        r3 += first is not None and first <= 3
        rr += 1.0 / first if first else 0.0
    n = len(results) or 1
    return {f"{prefix}recall_at_1": round(r1 / n, 3), f"{prefix}recall_at_3": round(r3 / n, 3),
            f"{prefix}mrr": round(rr / n, 3)}


def by_language(results: Got, suffix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for lang in ("pt", "en"):
        part = evaluate([r for r in results if r[0]["lang"] == lang], f"{lang}_")
        out.update({k + suffix: v for k, v in part.items()})
    return out


def misses(results: Got) -> list[str]:
    return [f"{item['lang']}: {item['question']} -> {[s for s, _ in got]}"
            for item, got in results if item["source"] not in [s for s, _ in got[:3]]]


async def ask(kb: Any, questions: list[dict[str, str]], qvecs: dict[str, list[float]] | None = None
              ) -> Got:
    got = []
    for item in questions:
        if qvecs is None:
            passages = await kb.search(item["question"], 3)
        else:  # the sweep: document search only, the question embedded once
            passages = await kb._search.search(item["question"], 3, qvec=qvecs[item["question"]])
        got.append((item, [(p.source, p.section) for p in passages]))
    return got


def load(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


async def sweep(kb: Any, questions: list[dict[str, str]], pt: list[dict[str, str]]
                ) -> dict[str, Any]:
    from rag.base import embed_query

    texts = [q["question"] for q in questions + pt] + UNRELATED
    qvecs = {t: embed_query(kb.embedder, t) for t in texts}
    base = kb._search.cfg
    rows = []
    for weight in SWEEP_WEIGHTS:
        for min_kw in SWEEP_MIN_KW:
            kb._search.cfg = dataclasses.replace(base, keyword_weight=weight,
                                                 min_keyword_score=min_kw)
            unrelated = await ask(kb, [{"question": t} for t in UNRELATED], qvecs)
            rows.append({"keyword_weight": weight, "min_keyword_score": min_kw,
                         **evaluate(await ask(kb, questions, qvecs)),
                         **by_language(await ask(kb, pt, qvecs)),
                         "unrelated_answered": sum(bool(g) for _, g in unrelated)})
    kb._search.cfg = base
    return {"sweep": rows}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from data.config import StorageConfig
    from data.store import Store
    from rag.config import RagConfig
    from rag.knowledge import SAMPLE_DIR, open_knowledge

    @dataclass(frozen=True)
    class Settings:  # the sections the knowledge base reads (rag.config.KnowledgeSettings)
        storage: StorageConfig
        rag: RagConfig

    torch.set_num_threads(os.cpu_count() or 1)
    questions, pt = load(DATA / "eval.jsonl"), load(EVAL_PT)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Settings(StorageConfig(dir=str(Path(tmp) / "var")),
                       RagConfig(embedding_model=args.embedding_model))
        async with Store(Path(tmp) / "nightowl.db") as store:
            kb = await open_knowledge(cfg, store)
            base = await kb.ingest([SAMPLE_DIR, DATA / "docs"])
            got_small = await ask(kb, questions)
            started = time.perf_counter()
            base += await kb.ingest([KB_PT])
            notes_s = time.perf_counter() - started
            bad = [r.line() for r in base if r.status == "skipped"]
            if bad:
                raise SystemExit(f"evaluation documents were skipped: {bad}")
            if args.sweep:
                out = await sweep(kb, questions, pt)
                await kb.aclose()
                return {**out, "embedding_model": args.embedding_model}
            got_pt = await ask(kb, pt)
            unrelated = await ask(kb, [{"question": t} for t in UNRELATED])
            fill_dir = Path(tmp) / "filler"
            fill_dir.mkdir()
            target = max(args.chunks - await kb.count(), 0)
            filler(fill_dir, target)
            started = time.perf_counter()
            fill = await kb.ingest([fill_dir])
            ingest_s = time.perf_counter() - started
            fill_chunks = sum(r.chunks for r in fill)
            total = await kb.count()
            started = time.perf_counter()
            await kb.search("warm up the caches")  # loads the mirror: every chunk, BM25 built
            load_s = time.perf_counter() - started
            got = await ask(kb, questions)
            got_pt_filler = await ask(kb, pt)
            times = []
            for _ in range(args.rounds):
                for item in questions + pt:
                    t0 = time.perf_counter()
                    await kb.search(item["question"])
                    times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            tokens = [int(m.get("tokens", 0)) for m in (await asyncio.to_thread(
                kb.collection.get, include=["metadatas"], limit=2000))["metadatas"]]
            await kb.aclose()
    at_10k = {f"{k}_with_filler": v for k, v in evaluate(got).items()}
    return {**evaluate(got_small), **at_10k, **by_language(got_pt),
            **by_language(got_pt_filler, "_with_filler"),
            "unrelated_answered": sum(bool(g) for _, g in unrelated),
            "ingest_chunks_s": round(fill_chunks / ingest_s, 1),
            "notes_ingest_s": round(notes_s, 2), "mirror_load_s": round(load_s, 2),
            "query_p50_ms": round(statistics.median(times), 2),
            "query_p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
            "chunks": total, "questions": len(questions),
            "pt_questions": sum(q["lang"] == "pt" for q in pt),
            "en_questions": sum(q["lang"] == "en" for q in pt),
            "chunk_tokens_mean": round(statistics.mean(tokens), 1) if tokens else 0,
            "embedding_model": args.embedding_model,
            "misses": misses(got_pt) if args.misses else []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5, help="latency passes over the questions")
    parser.add_argument("--embedding-model", default="embedded")
    parser.add_argument("--sweep", action="store_true", help="evaluate a grid of fusion settings")
    parser.add_argument("--misses", action="store_true", help="list the pt/en set's misses")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
