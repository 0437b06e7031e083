"""Chroma server mode: a real `chroma run` on loopback, started and stopped by the test."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.config import Config
from data.store import Store
from rag.base import CorrectionNote
from rag.errors import KnowledgeError
from rag.knowledge import open_knowledge

DOCS = Path(__file__).resolve().parent.parent / "data" / "rag" / "docs"


def _chroma_cli() -> str | None:
    local = Path(sys.executable).parent / "chroma"
    return str(local) if local.exists() else shutil.which("chroma")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[str]:
    cli = _chroma_cli()
    if cli is None:
        pytest.skip("the `chroma` CLI (shipped with the chromadb package) is not installed")
    port = _free_port()
    log = (tmp_path / "chroma.log").open("wb")
    proc = subprocess.Popen([cli, "run", "--path", str(tmp_path / "server"), "--port", str(port),
                             "--host", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise AssertionError(f"chroma run exited: {(tmp_path / 'chroma.log').read_text()}")
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # polling a process we started: there is no event to wait on
        else:
            raise AssertionError("chroma run did not answer within 30 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def test_server_round_trip(cfg: Config, store: Store, chroma_server: str) -> None:
    server_cfg = cfg.replace(rag__chroma_url=chroma_server)
    kb = await open_knowledge(server_cfg, store)
    results = await kb.ingest([DOCS / "error-codes.md", DOCS / "faq.jsonl"])
    assert {r.status for r in results} == {"added"}
    n = await kb.count()
    assert n == sum(r.chunks for r in results) > 5
    assert not (Path(cfg.storage.dir) / "chroma").exists()  # nothing embedded on disk
    # A second client (another process in real life) sees the same collection.
    other = await open_knowledge(server_cfg.replace(rag__exact_search_max=0), store)  # HNSW
    assert await other.count() == n
    assert (await other.search("What does error NX-4472 mean?"))[0].section == "NX-4472"
    assert not await other.exact_search()
    assert await kb.exact_search()
    assert [r.status for r in await other.ingest([DOCS / "error-codes.md"])] == ["unchanged"]
    assert await other.remove("faq.jsonl")
    assert await kb.search("Who approves travel expenses?") == []
    assert await kb.count() == n - 4
    # Correction notes live on the server too: written by one client, matched by the other.
    await kb.add_note(CorrectionNote(answer_id=7, owner_id=1, corrector_id=1, by="user",
                                     at=time.time(), question="Who approves travel expenses?",
                                     text="Travel expenses are approved by Dana in finance."))
    asked = "Who needs to approve travel expense reports?"
    top = (await other.search(asked))[0]
    assert top.chunk_id == "note:7" and top.source.startswith("correction by the user, ")
    assert await other.note_count() == 1 and await other.count() == n - 4
    assert await other.forget_notes(1) == 1
    assert [p.chunk_id for p in await kb.search(asked)] == []


async def test_unreachable_server_is_a_clear_error(cfg: Config, store: Store) -> None:
    with pytest.raises(KnowledgeError, match=r"cannot reach the Chroma server.*chroma run"):
        await open_knowledge(cfg.replace(rag__chroma_url=f"http://127.0.0.1:{_free_port()}"),
                             store)
