"""Discord adapter overhead: DM -> streamed, finished answer through real discord.py and a fake
Discord on loopback (FakeChatModel, real SQLite). Prints ONE JSON line.

Usage: .venv/bin/python bench/discord_roundtrip.py [N]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def main(n: int) -> dict[str, object]:
    import logging

    from bot.config import Config
    from bot.core import Core
    from bot.discord.client import DiscordBot
    from data.config import StorageConfig
    from data.store import Store
    from llm.fake import FakeChatModel
    from tests.fakes.discord_api import FakeDiscord

    logging.basicConfig(level=logging.ERROR)
    fake = FakeDiscord()
    await fake.start()
    with tempfile.TemporaryDirectory() as tmp, fake.patched():
        cfg = Config().replace(storage=StorageConfig(dir=tmp), model__backend="fake",
                               discord__guild_ready_timeout_s=0.05, discord__allow_dms=True,
                               discord__stream_edit_interval_s=0.2,
                               limits__user_messages_per_minute=0.0,
                               limits__chat_messages_per_minute=0.0)
        async with Store(Path(tmp) / "nightowl.db") as store:
            model = FakeChatModel(lambda m: " ".join(["word"] * 40), delay_s=0.005)
            core = Core(cfg, store, model)
            t0 = time.perf_counter()
            async with DiscordBot(cfg.discord, core, fake.valid_token):
                startup = time.perf_counter() - t0
                user = fake.add_user("bench")
                latencies = []
                for _ in range(n):
                    before = len(fake.requests)
                    t = time.perf_counter()
                    msg = await fake.user_message(user, "hello", dm=True)
                    await fake.wait_for(lambda m=msg, b=before: [
                        r for r in fake.requests[b:] if r.method == "PATCH"
                        and (r.body or {}).get("components")
                        and r.path.startswith(f"/channels/{m['channel_id']}/")])
                    latencies.append(time.perf_counter() - t)
                reqs = len(fake.requests)
    await fake.stop()
    latencies.sort()
    return {"bench": "discord_roundtrip", "messages": n, "startup_s": round(startup, 3),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p95_ms": round(latencies[int(0.95 * (n - 1))] * 1000, 1),
            "model_time_ms": 40 * 5, "requests_total": reqs}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))))
