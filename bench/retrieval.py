"""Retrieval benchmark: prints ONE JSON line.

Ingests the sample guide and the evaluation documents (tests/data/rag/docs) and measures recall@1,
recall@3 and MRR over tests/data/rag/eval.jsonl (a hit is a passage from the expected source whose
section contains the expected section). Then it fills the store with generated inventory records up
to ``--chunks`` chunks (default 10,000) and measures ingest throughput (filler chunks per second,
embedding included), query latency p50/p95 (``Knowledge.search``, embedding included) and the same
recall again with the distractors (``*_with_filler``).

    .venv/bin/python bench/retrieval.py [--chunks 10000] [--embedding-model embedded]
"""

from __future__ import annotations

import argparse
import asyncio
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
PRODUCTS = """mug bowl lamp chair desk shelf kettle blender toaster pillow blanket curtain rug
mirror vase clock frame basket candle towel jar tray stool bench cabinet drawer hook bin crate
""".split()
ADJ = "blue red green white black oak steel ceramic glass linen wool bamboo copper matte".split()
CITIES = "Lisbon Porto Leeds Lyon Gdansk Austin Denver Osaka Perth Quito Tunis Oslo".split()
NAMES = "Silva Okafor Jensen Moreau Novak Ito Kaur Haddad Rossi Park Alves Brandt".split()


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


def evaluate(results: list[tuple[dict[str, str], list[tuple[str, str]]]]) -> dict[str, float]:
    r1 = r3 = rr = 0.0
    for item, got in results:
        ranks = [i for i, (src, sec) in enumerate(got, 1) if src == item["source"]
                 and item.get("section", "").lower() in sec.lower()]
        first = ranks[0] if ranks else None
        r1 += first == 1
        r3 += first is not None and first <= 3
        rr += 1.0 / first if first else 0.0
    n = len(results) or 1
    return {"recall_at_1": round(r1 / n, 3), "recall_at_3": round(r3 / n, 3),
            "mrr": round(rr / n, 3)}


async def ask(kb: Any, questions: list[dict[str, str]]
              ) -> list[tuple[dict[str, str], list[tuple[str, str]]]]:
    got = []
    for item in questions:
        passages = await kb.search(item["question"], 3)
        got.append((item, [(p.source, p.section) for p in passages]))
    return got


async def run(args: argparse.Namespace) -> dict[str, float | int | str]:
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
    questions = [json.loads(line) for line in (DATA / "eval.jsonl").read_text().splitlines()
                 if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Settings(StorageConfig(dir=str(Path(tmp) / "var")),
                       RagConfig(embedding_model=args.embedding_model))
        async with Store(Path(tmp) / "nightowl.db") as store:
            kb = await open_knowledge(cfg, store)
            base = await kb.ingest([SAMPLE_DIR, DATA / "docs"])
            bad = [r.line() for r in base if r.status == "skipped"]
            if bad:
                raise SystemExit(f"evaluation documents were skipped: {bad}")
            got_small = await ask(kb, questions)
            fill_dir = Path(tmp) / "filler"
            fill_dir.mkdir()
            target = max(args.chunks - await kb.count(), 0)
            filler(fill_dir, target)
            started = time.perf_counter()
            fill = await kb.ingest([fill_dir])
            ingest_s = time.perf_counter() - started
            fill_chunks = sum(r.chunks for r in fill)
            total = await kb.count()
            await kb.search("warm up the caches")
            got = await ask(kb, questions)
            times = []
            for _ in range(args.rounds):
                for item in questions:
                    t0 = time.perf_counter()
                    await kb.search(item["question"])
                    times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            tokens = [int(m.get("tokens", 0)) for m in (await asyncio.to_thread(
                kb.collection.get, include=["metadatas"], limit=2000))["metadatas"]]
            await kb.aclose()
    at_10k = {f"{k}_with_filler": v for k, v in evaluate(got).items()}
    return {**evaluate(got_small), **at_10k,
            "ingest_chunks_s": round(fill_chunks / ingest_s, 1),
            "query_p50_ms": round(statistics.median(times), 2),
            "query_p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
            "chunks": total, "questions": len(questions),
            "chunk_tokens_mean": round(statistics.mean(tokens), 1) if tokens else 0,
            "embedding_model": args.embedding_model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5, help="latency passes over the questions")
    parser.add_argument("--embedding-model", default="embedded")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
