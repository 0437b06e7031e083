"""Every page and action through aiohttp's test client on real services (store, LearningService
with the fake trainer, the fake model): what it shows, what it changes, the audit rows."""

from __future__ import annotations

import asyncio
import json

import pytest

from bot.console.app import Progress
from data.rows import ReviewItem
from tests.console.conftest import Env, storage
from tests.fakes.training_data import seed_chat
from training.probes import ProbeFile
from training.registry import Registry


async def _suggestion(env: Env, text: str = "Send /retrain as an admin.") -> ReviewItem:
    """Someone else's correction of u1's answer: a suggestion, waiting for review."""
    (aid,) = await seed_chat(env.store, [("How do I retrain the bot?", "I don't know.")],
                             feedback=None)
    other = await env.store.ensure_user("telegram", "u2", "Bea")
    cid = await env.store.add_correction(aid, other.id, text, origin="suggestion")
    item = await env.store.correction_item(cid)
    assert item is not None
    return item


async def test_overview_shows_model_adapter_counts_and_warnings(env: Env) -> None:
    await seed_chat(env.store, [("hi", "hello"), ("more?", "sure")], feedback=1)
    run_id = await env.store.start_run("test")
    await env.store.finish_run(run_id, "failed", summary="failed: out of memory")
    await env.login()
    html = await (await env.client.get("/")).text()
    assert "<b>fake</b>" in html and 'id="active-adapter">base<' in html
    assert "failed: out of memory" in html and "⚠️" in html
    assert "👍 2" in html  # two ratings this week
    assert "Next run:" in html


async def test_conversations_search_escapes_sql_and_html(env: Env) -> None:
    await seed_chat(env.store, [("<script>alert(1)</script> hello", "An answer")], user="eve",
                    feedback=-1, sources=[{"source": "guide.md", "section": "Intro",
                                           "text": "passage text", "score": 0.8,
                                           "chunk_id": "c1"}])
    await seed_chat(env.store, [("plain question", "plain answer")], user="bob", feedback=1)
    await env.login()
    html = await (await env.client.get("/conversations")).text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert html.count('href="/conversations/') >= 2
    for attack in ("' OR 1=1 --", "%", "_", "\\"):
        html = await (await env.client.get("/conversations", params={"q": attack})).text()
        assert "No conversation matches." in html, attack
    html = await (await env.client.get("/conversations", params={"rating": "down"})).text()
    assert "eve" in html and "bob" not in html
    html = await (await env.client.get("/conversations", params={"user": "bo"})).text()
    assert "bob" in html and "eve" not in html
    conv_id = html.split('href="/conversations/')[1].split('"')[0]
    detail = await (await env.client.get(f"/conversations/{conv_id}")).text()
    assert "plain answer" in detail and "adapter <b>base</b>" in detail and "👍" in detail
    eve = await (await env.client.get("/conversations", params={"user": "eve"})).text()
    eve_id = eve.split('href="/conversations/')[1].split('"')[0]
    detail = await (await env.client.get(f"/conversations/{eve_id}")).text()
    assert "guide.md › Intro" in detail and "0.10 s" in detail
    assert (await env.client.get("/conversations/999999")).status == 404


async def test_review_approve_edit_reject_and_final_decisions(env: Env) -> None:
    first = await _suggestion(env)
    await env.login()
    html = await (await env.client.get("/review")).text()
    assert f'id="item-{first.key}"' in html and "suggestion correction by Bea" in html
    assert "pending_review" in html  # tonight's dataset drops it until it is decided
    resp = await env.post("/review/decide", key=first.key, verb="approve", text=first.text)
    assert f"Approved {first.key}" in await resp.text()
    item = await env.store.correction_item(first.correction_id or 0)
    assert item is not None and item.decision == "approved" and item.reviewer == "console:admin"
    again = await env.post("/review/decide", key=first.key, verb="reject")
    assert "already approved" in await again.text()
    audit = await env.audit("review")
    assert audit[1].platform == "console" and audit[1].args == f"approve {first.key}"
    # edit: approve with the admin's text
    second = await _suggestion(env, "Use /retrain.")
    await env.post("/review/decide", key=second.key, verb="edit", text="Admins send /retrain.")
    item = await env.store.correction_item(second.correction_id or 0)
    assert item is not None and item.edited == "Admins send /retrain."
    html = await (await env.client.get("/review")).text()
    assert "Nothing waits for review." in html


async def test_bulk_review_asks_then_decides_every_selected_item(env: Env) -> None:
    a, b = await _suggestion(env), await _suggestion(env, "Another fix.")
    await env.login()
    csrf = await env.csrf("/review")
    form = [("csrf", csrf), ("verb", "reject"), ("key", a.key), ("key", b.key)]
    ask = await env.client.post("/review/bulk", data=form)
    text = await ask.text()
    assert "Reject 2 item(s)" in text and 'name="confirm" value="yes"' in text
    assert (await env.store.correction_item(a.correction_id or 0)).decision is None  # type: ignore[union-attr]
    done = await env.client.post("/review/bulk", data=[*form, ("confirm", "yes")])
    assert (await done.text()).count("Rejected c") == 2
    for it in (a, b):
        got = await env.store.correction_item(it.correction_id or 0)
        assert got is not None and got.decision == "rejected"


async def test_export_jsonl_is_the_training_dataset(env: Env) -> None:
    await seed_chat(env.store, [("What is NightOwl?", "A self-hosted assistant that learns.")])
    await env.login()
    resp = await env.client.get("/review/export.jsonl")
    lines = (await resp.text()).splitlines()
    assert resp.headers["Content-Disposition"].startswith("attachment")
    record = json.loads(lines[0])
    assert record["messages"][-1]["content"] == "A self-hosted assistant that learns."
    assert (await env.audit("export"))[0].result == "1 examples"


async def test_train_now_confirms_runs_once_and_shows_the_run(env: Env) -> None:
    await env.login()
    ask = await env.post("/training/train")
    assert "Start a training run now?" in await ask.text()
    assert env.trainer.calls == []
    csrf = await env.csrf("/training")
    first, second = await asyncio.gather(  # a double click
        env.client.post("/training/train", data={"csrf": csrf, "confirm": "yes"}),
        env.client.post("/training/train", data={"csrf": csrf, "confirm": "yes"}))
    texts = [await first.text(), await second.text()]
    assert sum("Started a training run" in t for t in texts) == 1
    assert sum("already in progress" in t for t in texts) == 1
    await env.trainer.started.wait()
    running = await (await env.client.get("/training")).text()
    assert 'id="running"' in running and 'http-equiv="refresh"' in running
    assert "running" in running and 'id="train-now" disabled' in running
    env.trainer.release.set()
    assert env.state.training is not None
    await env.state.training
    assert env.trainer.calls == ["console"]
    html = await (await env.client.get("/training")).text()
    assert 'class="status promoted"' in html and "v0001" in html
    assert '<svg class="loss"' in html and "held-out (reference) 1.48" in html
    assert "heldout loss" in html and "1.12" in html and "Send /retrain." in html
    assert "samples_per_s" in html and "peak_rss_mb" in html
    finished, *requests = [a.result for a in await env.audit("retrain")]
    assert sorted(requests) == ["refused: a run is in progress", "started"]
    assert finished == "Training run #1: promoted v0001 (parent base)"
    assert env.model.active_adapter == "v0001"


async def test_rollback_asks_then_switches_the_active_adapter(env: Env) -> None:
    await env.login()
    env.trainer.release.set()
    for _ in range(2):
        await env.post("/training/train", confirm="yes")
        assert env.state.training is not None
        await env.state.training
    assert env.model.active_adapter == "v0002"
    ask = await env.post("/training/rollback", version="v0001")
    assert "Make v0001 the active adapter?" in await ask.text()
    assert env.model.active_adapter == "v0002"
    done = await env.post("/training/rollback", version="v0001", confirm="yes")
    assert "Active adapter is now v0001 (was v0002)" in await done.text()
    assert env.model.active_adapter == "v0001" and Registry(storage(env.cfg)).active() == "v0001"
    assert (await env.audit("rollback"))[0].platform == "console"


async def test_promote_of_a_rejected_candidate_is_refused(env: Env) -> None:
    env.trainer.outcome = "waiting"
    env.trainer.release.set()
    await env.login()
    await env.post("/training/train", confirm="yes")
    assert env.state.training is not None
    await env.state.training
    html = await (await env.client.get("/training")).text()
    assert 'id="waiting"' in html and "v0001" in html
    rejected = await env.post("/training/candidate", verb="reject", confirm="yes")
    assert "Rejected v0001" in await rejected.text()
    again = await env.post("/training/candidate", verb="approve", confirm="yes")
    assert "No candidate is waiting for approval." in await again.text()
    assert env.model.active_adapter is None


async def test_probes_add_remove_and_the_audit_log(env: Env) -> None:
    await env.login()
    await env.post("/probes/add", question="Who trains <me>?", expected="NightOwl")
    probes = ProbeFile(storage(env.cfg) / "probes.json").load()
    assert [(p.question, p.expected) for p in probes] == [("Who trains <me>?", "NightOwl")]
    html = await (await env.client.get("/probes")).text()
    assert "Who trains &lt;me&gt;?" in html and ">probe<" in html  # listed, and audited
    await env.post("/probes/remove", n="1")
    assert ProbeFile(storage(env.cfg) / "probes.json").load() == []
    assert [a.args for a in await env.audit("probe")] == ["remove 1",
                                                          "add Who trains <me>? => NightOwl"]


async def test_compare_streams_every_column_and_stores_nothing(env: Env) -> None:
    await env.login()
    csrf = await env.csrf("/compare")
    resp = await env.client.post("/compare/stream", data=[
        ("prompt", "Hello there"), ("adapter", "base"), ("adapter", "active"),
        ("retrieval", "on"), ("retrieval", "off")], headers={"X-CSRF-Token": csrf})
    events = [json.loads(line) for line in (await resp.text()).splitlines()]
    done = {e["col"]: e for e in events if e.get("done")}
    assert sorted(done) == [0, 1, 2, 3]
    text = {c: "".join(e.get("delta", "") for e in events if e["col"] == c) for c in done}
    assert all(t == "You said: Hello there." for t in text.values())
    assert (await env.store.stats()).messages == 0  # comparing never stores a conversation
    assert (await env.audit("compare"))[0].result == "Hello there"


async def test_compare_without_javascript_and_a_blind_vote(env: Env) -> None:
    env.trainer.release.set()
    await env.login()
    await env.post("/training/train", confirm="yes")
    assert env.state.training is not None
    await env.state.training
    html = await (await env.post("/compare", prompt="Hi", adapter=["base", "v0001"],
                                 retrieval="off")).text()
    assert "base · without retrieval" in html and "answered by v0001" in html
    page = await (await env.client.post("/compare/blind", data=[
        ("csrf", await env.csrf("/compare")), ("prompt", "Which?"), ("adapter", "base"),
        ("adapter", "v0001"), ("retrieval", "on")])).text()
    trial = page.split('name="trial" value="')[1].split('"')[0]
    assert "answered by" not in page  # blind: which adapter wrote which stays hidden
    voted = await env.post("/compare/vote", trial=trial, choice="A")
    assert "Vote stored as a preference pair" in await voted.text()
    pairs = (storage(env.cfg) / "preferences" / "pairs.jsonl").read_text().splitlines()
    record = json.loads(pairs[0])
    assert record["prompt"] == "Which?" and record["by"] == "admin"
    assert {record["chosen_adapter"], record["rejected_adapter"]} == {"base", "v0001"}
    twice = await env.post("/compare/vote", trial=trial, choice="B")
    assert "already voted" in await twice.text()


@pytest.mark.parametrize("name", ["notes.md"])
async def test_knowledge_upload_remove_search_and_reindex(kb_env: Env, name: str) -> None:
    env = kb_env
    await env.login()
    csrf = await env.csrf("/knowledge")
    from aiohttp import FormData

    form = FormData()
    form.add_field("csrf", csrf)
    form.add_field("files", b"# Retraining\n\nSend /retrain to train the owl tonight.\n",
                   filename=name, content_type="text/markdown")
    form.add_field("files", b"MZ\x90\x00binary", filename="tool.exe",
                   content_type="application/octet-stream")
    form.add_field("files", b"x" * 20_000, filename="big.txt", content_type="text/plain")
    html = await (await env.client.post("/knowledge/upload", data=form)).text()
    assert "added: notes.md (1 chunks)" in html
    assert "skipped: tool.exe (unsupported" in html
    assert ("skipped: big.txt (too large: 20,000 bytes, the limit is 10,485 ([rag] "
            "max_file_mb))") in html  # the line `nightowl ingest` prints
    audit = (await env.audit("ingest"))[0]
    assert audit.allowed and audit.args == "notes.md, tool.exe, big.txt"
    page = await (await env.client.get("/knowledge", params={"q": "how to retrain the owl"})
                  ).text()
    assert 'id="passages"' in page and "notes.md › Retraining" in page and "score" in page
    source = page.split('name="source" value="')[1].split('"')[0]
    ask = await env.post("/knowledge/remove", source=source)
    assert "Remove" in await ask.text() and len(await env.core.knowledge.sources()) == 1  # type: ignore[union-attr]
    done = await env.post("/knowledge/remove", source=source, confirm="yes")
    assert f"removed: {source}" in await done.text()
    assert await env.core.knowledge.sources() == []  # type: ignore[union-attr]
    started = await env.post("/knowledge/reindex", confirm="yes")
    assert "Reindex started" in await started.text()
    await asyncio.gather(*env.state.tasks)
    assert env.state.reindex == Progress(False, 0, 0, "Reindexed 0 chunks.")
    assert (await env.audit("kb reindex"))[0].result == "Reindexed 0 chunks."


async def test_an_upload_over_the_request_limit_gets_a_page_not_a_crash(kb_env: Env) -> None:
    env = kb_env
    await env.login()
    from aiohttp import FormData

    form = FormData()
    form.add_field("csrf", await env.csrf("/knowledge"))
    form.add_field("files", b"y" * (9 * 10_485 + 1024 * 1024 + 1), filename="huge.txt")
    resp = await env.client.post("/knowledge/upload", data=form)
    assert resp.status == 413 and "upload fewer or smaller files" in await resp.text()
    assert await env.core.knowledge.sources() == []  # type: ignore[union-attr]
