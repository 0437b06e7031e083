"""Nothing blocks the event loop on the hot path (issue #19 item 6).

A ticker task measures the loop's lag (how much later than asked it wakes up) while the real
code runs: the moderation classifier loading at start-up and checking a message (the real
``ClassifierGuard`` with a real transformers pipeline on the embedded model), a long history fitted
to the real local model's context by ``Core.handle``, and a learning cycle's file work (dataset
files, probes, registry, retention). Each operation is made big enough that on the loop it would
stall it for well over the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from bot.config import Config
from bot.core import CollectingRenderer, Core, Incoming
from bot.core.config import ModerationConfig
from bot.core.conversation import MODERATED_REPLY
from data.config import StorageConfig
from data.store import Store
from llm.base import ChatMessage
from llm.fake import FakeChatModel
from tests.fakes.training_data import seed_chat, write_adapter_files
from training import cycle as cycle_mod
from training.cycle import run_cycle
from training.job import TrainJob, TrainResult, TrainStats
from training.registry import Registry

pytestmark = pytest.mark.slow

LIMIT_S = 0.05  # the longest the loop may stall
TICK_S = 0.002


class LoopLag:
    """``async with LoopLag() as lag:`` runs a ticker; ``lag.worst`` is its longest late wakeup
    (seconds) while the block ran, ``lag.stalled`` the sum of its wakeups later than
    :data:`LIMIT_S`, ``lag.elapsed`` the block's duration, ``lag.ticks`` how often it woke."""

    def __init__(self) -> None:
        self.worst = self.stalled = self.elapsed = 0.0
        self.ticks = 0
        self._ticked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._tick())
        await self._next_tick()  # the ticker runs before the operation starts
        self.worst = self.stalled = 0.0
        self.ticks = 0
        self.elapsed = -asyncio.get_running_loop().time()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._next_tick()  # a stall at the very end is measured too
        self.elapsed += asyncio.get_running_loop().time()
        assert self._task is not None
        self._task.cancel()

    async def _next_tick(self) -> None:
        self._ticked.clear()
        await self._ticked.wait()

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(TICK_S)
            late = loop.time() - asked - TICK_S
            self.worst = max(self.worst, late)
            self.stalled += late if late > LIMIT_S else 0.0
            self.ticks += 1
            self._ticked.set()


async def limit_here(seconds: float) -> float:
    """:data:`LIMIT_S` plus the late wakeups this machine gives the loop right now while another
    thread runs plain Python for ``seconds`` — what ANY work moved off the loop costs it in GIL
    hand-overs (a few ms on an idle box, tens when other processes crowd the 2 cores). Work
    left on the loop stalls it for its whole duration whatever the machine does."""
    stop = threading.Event()

    def busy() -> None:
        n = 0
        while not stop.is_set():
            n = (n * 31 + 7) % 1_000_003

    worker = threading.Thread(target=busy, daemon=True)
    async with LoopLag() as other:
        worker.start()
        try:
            await asyncio.sleep(max(seconds, 0.2))
        finally:
            stop.set()
    worker.join()
    return LIMIT_S + other.worst


def text(rnd: random.Random, chars: int) -> str:
    words = ("owl night forest mouse wing feather moon branch hunt quiet river stone tree "
             "winter silver hollow").split()
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(rnd.choice(words) + (str(rnd.randrange(1000)) if rnd.random() < 0.1 else ""))
    return " ".join(out)[:chars]


# ---- the moderation classifier -----------------------------------------------------------------
async def test_the_classifier_loads_and_checks_off_the_loop(
        cfg: Config, embedded_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bot.app import open_services

    # a real text-classification pipeline: the embedded model with a fresh classification head;
    # with every label at threshold 0 it refuses every message (so a refusal proves it ran)
    moderated = cfg.replace(moderation=ModerationConfig(
        classifier_model=str(embedded_model_dir), classifier_labels=["LABEL_0", "LABEL_1"],
        classifier_threshold=0.0), rag__enabled=False)
    async with contextlib.AsyncExitStack() as stack:
        async with LoopLag() as start:
            svc = await stack.enter_async_context(open_services(moderated, say=lambda s: None,
                                                                learning=False))
        async with LoopLag() as check:
            reply = await svc.core.handle(Incoming("terminal", "c", "u", "U", "owl " * 500),
                                          CollectingRenderer())
    with capsys.disabled():
        print(f"\nloop lag: classifier start-up {start.worst * 1000:.1f} ms worst, stalled "
              f"{start.stalled:.2f} of {start.elapsed:.2f} s; check {check.worst * 1000:.1f} ms")
    assert reply.text == MODERATED_REPLY  # the classifier ran
    assert start.ticks and check.ticks
    assert check.worst < await limit_here(check.elapsed), \
        f"the check stalled the loop {check.worst:.3f} s"
    # Loading runs in a worker thread, and the loop runs meanwhile. Parts of the load hold the
    # GIL (importing torch's extension modules, transformers' JSON decode of tokenizer.json, the
    # Rust tokenizer's constructor), so the loop still waits for those, before any platform is
    # connected; loaded on the loop, it would wait for the whole load in one stall.
    assert start.worst < 0.8 * start.elapsed, (start.worst, start.elapsed)


# ---- token counting of a long history ------------------------------------------------------------
class RealTokenCount(FakeChatModel):
    """Counts tokens exactly as ``LocalChatModel.count_tokens`` does (the chat template rendered
    and tokenized by the embedded model's tokenizer, ``llm.local.loading.render``); answers
    instantly, so the measured lag is the prompt fitting's."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        super().__init__(context_length=2048)
        self.tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.counted_chars = 0

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        from llm.local.loading import render

        self.counted_chars += sum(len(m["content"]) for m in messages)
        return len(render(self.tok, messages))


async def test_a_long_history_is_fitted_off_the_loop(
        cfg: Config, store: Store, embedded_model_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    rnd = random.Random(19)
    model = RealTokenCount(embedded_model_dir)
    core = Core(cfg.replace(limits__user_messages_per_minute=0.0), store, model, None)
    user = await store.ensure_user("terminal", "u", "U")
    conv = await store.active_conversation(user.id, "terminal", "c")
    history = 0
    for _ in range(10):  # 20 history messages of 8,000 characters
        qid = await store.add_message(conv, "user", text(rnd, 8000))
        await store.answer(qid, conv, text(rnd, 8000), model="m", adapter=None,
                           latency_s=0.1, sources=[])
        history += 16_000
    # the best of a few tries: a busy machine can delay one tick, blocking code delays every try
    worst: list[float] = []
    for _ in range(3):
        async with LoopLag() as lag:
            reply = await core.handle(Incoming("terminal", "c", "u", "U", text(rnd, 8000)),
                                      CollectingRenderer())
        limit = await limit_here(lag.elapsed)
        worst.append(lag.worst)
        if lag.worst < limit:
            break
    with capsys.disabled():
        print(f"\nloop lag: fitting 20 x 8,000-character history {lag.worst * 1000:.1f} ms "
              f"({model.counted_chars:,} characters counted)")
    assert reply.answer_id is not None and lag.ticks
    assert any("used only the last" in n for n in reply.notices)  # the history was cut
    assert model.count_tokens(model.calls[0]["messages"]) <= 2048 - cfg.model.max_new_tokens
    # counted incrementally: a few budgets' worth, not the whole history once per dropped turn
    assert model.counted_chars < history
    assert worst[-1] < limit, f"fitting the prompt stalled the loop {worst} s (limit {limit})"


# ---- a learning cycle's file work ----------------------------------------------------------------
def _passing_scores() -> dict[str, Any]:
    return {"heldout": {"candidate": {"loss": 1.0, "accuracy": 0.6},
                        "reference": {"loss": 2.0, "accuracy": 0.4}},
            "probes": {"candidate": {"total": 0, "passed": 0},
                       "reference": {"total": 0, "passed": 0}},
            "regression": {}, "reference": "base"}


async def trained_elsewhere(cfg: Any, job: TrainJob, *, say: Any = None) -> TrainResult:
    """Stands in for ``train_in_child``: the training runs in its own process, so none of it
    runs on this loop; it leaves the adapter files (and many more, which registering fsyncs)
    and scores that pass the gate."""
    await asyncio.to_thread(write_adapter_files, Path(job.adapter_out))
    await asyncio.to_thread(_many_files, Path(job.adapter_out) / "extra", 2000)
    stats = TrainStats(loss_curve=[[1, 2.0], [2, 1.0]], train_loss=1.5, train_runtime_s=1.0,
                       samples_per_s=1.0, steps=2, epochs=1.0, examples=1)
    return TrainResult(backend="stand-in", stats=stats, scores=_passing_scores(),
                       peak_rss_mb=0.0, duration_s=1.0, threads=1)


def _many_files(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"f{i:05d}.bin").write_bytes(b"x")


async def test_a_learning_cycle_does_its_file_work_off_the_loop(
        tmp_path: Path, store: Store, embedded_model_dir: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cycle_mod, "train_in_child", trained_elsewhere)
    cfg = Config().replace(
        storage=StorageConfig(dir=str(tmp_path / "var")), model__backend="fake",
        model__name=str(embedded_model_dir), training__min_examples=1,
        training__eval_fraction=0.3, training__max_seq_len=4096, training__keep_adapters=1,
        training__base_replay=0, privacy__scrub_pii=False)
    storage = cfg.storage.path
    rnd = random.Random(6)
    # a dataset of ~500 examples with long histories (several MB of train/eval JSONL)
    for n in range(25):
        await seed_chat(store, [(text(rnd, 400) + "?", text(rnd, 800)) for _ in range(20)],
                        user=f"u{n}")
    # admins' probes, rejected versions with many files (retention deletes them), and a crashed
    # run's staging folder (the cycle clears it first)
    probes = [{"question": text(rnd, 60) + "?", "expected": text(rnd, 20)} for _ in range(50)]
    (storage / "probes.json").parent.mkdir(parents=True, exist_ok=True)
    (storage / "probes.json").write_text(json.dumps(probes))
    reg = Registry(storage)
    for _ in range(3):
        staged = write_adapter_files(reg.staging_dir())
        _many_files(staged / "checkpoint", 3000)
        reg.register(staged, {"status": "rejected"})
    _many_files(reg.root / ".staging-crashed", 9000)
    # what a cycle loads once per process, and whose loading holds the GIL (see the classifier
    # test), is loaded first, as a serving process does before it serves
    await asyncio.to_thread(cycle_mod.warm_up, cfg)
    model = FakeChatModel()
    async with LoopLag() as lag:
        result = await run_cycle(cfg, store, trigger="test", model=model, say=lambda s: None)
    with capsys.disabled():
        print(f"\nloop lag: learning cycle file work {lag.worst * 1000:.1f} ms")
    assert result.status == "promoted", result.text()
    assert result.version == "v0004" and model.active_adapter == "v0004"
    assert "v0001" not in reg.versions() and "v0004" in reg.versions()  # retention deleted
    assert not (reg.root / ".staging-crashed").exists()
    assert result.run_dir is not None
    assert (result.run_dir / "train.jsonl").stat().st_size > 3_000_000
    assert lag.ticks and lag.worst < await limit_here(lag.elapsed), \
        f"the cycle stalled the loop {lag.worst:.3f} s"
