"""LocalChatModel with the real embedded model on tiny budgets (greedy, a few tokens).

The model runs in float32 here so that batched and single-request greedy decoding give
bit-identical text (bf16 batched matmuls may round differently and flip a near-tie).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm.base import BASE, GenParams, StreamInfo
from llm.config import ModelConfig
from llm.errors import AdapterError, BusyError, ModelError
from llm.local import LocalChatModel
from llm.local.loading import Loaded
from llm.prompt import build_messages, fit_messages
from tests.conftest import TEST_CACHE

GREEDY = GenParams(max_new_tokens=8, temperature=0.0, repetition_penalty=1.2)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text}]


async def run(model: LocalChatModel, text: str, params: GenParams = GREEDY,
              adapter: str = "active") -> tuple[str, StreamInfo]:
    info = StreamInfo()
    out = "".join([d async for d in model.stream(ask(text), params, adapter=adapter,
                                                  info=info)])
    return out, info


def make_model(embedded_model_dir: Path, **kw: object) -> Iterator[LocalChatModel]:
    cfg = ModelConfig(dtype="float32", threads=1, **kw)  # type: ignore[arg-type]
    model = LocalChatModel(cfg, TEST_CACHE, say=lambda s: None)
    model.load()
    yield model
    asyncio.run(model.aclose())


@pytest.fixture(scope="module")
def model(embedded_model_dir: Path) -> Iterator[LocalChatModel]:
    yield from make_model(embedded_model_dir, max_batch_size=4, max_queue=8,
                          context_length=512)


@pytest.fixture(scope="module")
def adapters(embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Path]:
    """Two tiny LoRA adapters with deterministic non-zero B weights (so outputs differ)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for label, seed in (("vA", 1), ("vB", 2)):
        base = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
        peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8,
                                                     target_modules=["q_proj", "v_proj"]))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name or "lora_A" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
        path = tmp_path_factory.mktemp(label)
        peft_model.save_pretrained(str(path))
        out[label] = path
    return out


async def test_concurrent_greedy_matches_alone(model: LocalChatModel) -> None:
    cases = [("What is the capital of France?", GenParams(max_new_tokens=6, temperature=0)),
             ("Name three colors.", GenParams(max_new_tokens=10, temperature=0,
                                              repetition_penalty=1.0)),
             ("Write a haiku about owls.", GenParams(max_new_tokens=12, temperature=0,
                                                     repetition_penalty=1.3, stop=("\n",))),
             ("Explain Python lists.", GenParams(max_new_tokens=7, temperature=0))]
    alone = [await run(model, q, p) for q, p in cases]
    together = await asyncio.gather(*(run(model, q, p) for q, p in cases))
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert all(t for t, _ in alone)
    for (_, info), (_, p) in zip(together, cases, strict=True):
        assert info.completion_tokens <= p.max_new_tokens
        assert info.finish_reason in ("stop", "length")
    assert "\n" not in together[2][0]  # stop string honoured
    # the engine (prefill + batched decode kernel + own sampler) matches transformers' generate
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    q, p = cases[0]

    def reference(loaded: Loaded) -> str:  # on the model's own thread, like the engine's work
        tok = loaded.tokenizer
        ids = tok.apply_chat_template(ask(q), add_generation_prompt=True, return_dict=True,
                                      return_tensors="pt")
        start = ids["input_ids"].shape[1]

        class GeneratedOnlyPenalty(LogitsProcessor):
            """HF's repetition penalty restricted to generated tokens (NightOwl's semantics)."""

            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                gen = input_ids[:, start:]
                if gen.shape[1] == 0:
                    return scores
                picked = torch.gather(scores, 1, gen)
                picked = torch.where(picked < 0, picked * p.repetition_penalty,
                                     picked / p.repetition_penalty)
                return scores.scatter(1, gen, picked)

        with torch.inference_mode():
            ref = loaded.model.generate(**ids, max_new_tokens=p.max_new_tokens, do_sample=False,
                                        logits_processor=LogitsProcessorList(
                                            [GeneratedOnlyPenalty()]))
        return str(tok.decode(ref[0, start:], skip_special_tokens=True))

    assert await model.run_on_worker(reference) == alone[0][0]
    assert model.stats()["running"] == 0


@pytest.fixture(scope="module")
def tight(embedded_model_dir: Path) -> Iterator[LocalChatModel]:
    yield from make_model(embedded_model_dir, max_batch_size=1, max_queue=1)


async def test_model_that_cannot_pack_prompts_prefills_them_one_by_one(
        model: LocalChatModel, embedded_model_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """If the packed segments never reach the attention kernel (an architecture that does not
    pass them on), the engine notices and prefills each prompt alone: same answers. On a model
    of its own: the fallback lasts for the life of the engine."""
    cases = [("What is the capital of France?", 6), ("Name three colors.", 9),
             ("Write a haiku about owls.", 7)]
    params = [GenParams(max_new_tokens=n, temperature=0) for _, n in cases]
    alone = [(await run(model, q, p))[0] for (q, _), p in zip(cases, params, strict=True)]
    gen = make_model(embedded_model_dir, max_batch_size=4, max_queue=8, context_length=512)
    fresh = next(gen)
    try:
        assert fresh.packs_prompts
        monkeypatch.setattr("llm.local.prefill.PACKED_MARK", "a_mark_the_kernel_never_sees")
        together = await asyncio.gather(*(run(fresh, q, p)
                                          for (q, _), p in zip(cases, params, strict=True)))
        assert fresh.packs_prompts is False  # a pack was tried, seen to fail, and given up
        assert [t for t, _ in together] == alone
    finally:
        await fresh.aclose()


async def test_ignore_eos_runs_answers_to_their_full_length(model: LocalChatModel) -> None:
    q = "Answer with one word: is the sky blue?"
    natural, info = await run(model, q, GenParams(max_new_tokens=48, temperature=0))
    assert info.finish_reason == "stop" and info.completion_tokens < 48
    fixed, info = await run(model, q, GenParams(max_new_tokens=48, temperature=0,
                                                ignore_eos=True))
    assert info.finish_reason == "length" and info.completion_tokens == 48
    assert fixed.startswith(natural)


@dataclass
class InLine(StreamInfo):
    """A StreamInfo that also says when its request is in line: ``stream`` sets
    ``queue_position`` as soon as it has queued the request."""

    def __post_init__(self) -> None:
        self.queued = asyncio.Event()

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name == "queue_position" and "queued" in self.__dict__:
            self.queued.set()


async def test_queue_full_and_cancellation_free_the_slot(tight: LocalChatModel) -> None:
    long = GenParams(max_new_tokens=400, temperature=0.0, ignore_eos=True)  # 400 tokens, always
    long_info = StreamInfo()
    marks: list[tuple[float, int]] = []  # (arrival, completion tokens) of each long delta
    started, paced = asyncio.Event(), asyncio.Event()

    async def consume(params: GenParams, info: StreamInfo | None = None) -> str:
        return "".join([d async for d in tight.stream(ask("Tell me a long story about a fox."),
                                                      params, info=info)])

    async def long_answer() -> None:
        async for _ in tight.stream(ask("Tell me a long story about a fox."), long,
                                    info=long_info):
            marks.append((time.perf_counter(), long_info.completion_tokens))
            started.set()
            if long_info.completion_tokens >= 16:
                paced.set()

    running = asyncio.create_task(long_answer())
    await started.wait()  # the long request occupies the only batch slot
    line = InLine()
    waiting = asyncio.create_task(consume(GenParams(max_new_tokens=2, temperature=0), line))
    await line.queued.wait()
    assert line.queue_position == 1 and tight.stats()["queue"] == 1  # behind a full batch
    with pytest.raises(BusyError, match="number 2 in line") as exc:
        await consume(GenParams(max_new_tokens=2))
    assert exc.value.position == 2  # the waiting request is still in line: the slot is taken
    waiting.cancel()  # cancelling a queued request frees its place at once
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert tight.stats()["queue"] == 0

    await paced.wait()  # the long answer's own pace, measured in this run
    line = InLine()
    after = asyncio.create_task(consume(GenParams(max_new_tokens=3, temperature=0), line))
    await line.queued.wait()  # in line behind the long answer
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    per_token = (t1 - t0) / (n1 - n0)
    cancelled_at = time.perf_counter()
    running.cancel()  # cancelling the running one frees the batch slot for the next
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await after
    waited = time.perf_counter() - cancelled_at
    left = long.max_new_tokens - long_info.completion_tokens
    assert long_info.finish_reason == "" and left > 300  # the long answer never finished
    # had the slot stayed taken, ``after`` would have waited for the long answer's last ~300
    # tokens; it took a prefill and 3 decode steps instead
    assert waited < left * per_token / 4, (waited, left, per_token)
    assert tight.stats()["running"] == 0


async def test_context_fitting_with_real_tokenizer(model: LocalChatModel) -> None:
    history = []
    for i in range(30):
        history += [{"role": "user", "content": f"Question {i} about owls and their habits?"},
                    {"role": "assistant", "content": f"Answer {i}: owls hunt at night."}]
    msgs = build_messages("You are NightOwl.", None, history, "And what do owls eat?")
    fitted = fit_messages(msgs, model.count_tokens, 200)
    assert fitted.dropped_history > 0 and not fitted.truncated_user
    assert model.count_tokens(fitted.messages) <= 200
    assert fitted.messages[1]["role"] == "user"
    assert fitted.messages[-1]["content"] == "And what do owls eat?"
    huge = build_messages("You are NightOwl.", None, history, "owl " * 25_000)  # 100 KB
    fitted = fit_messages(huge, model.count_tokens, 300)
    assert fitted.truncated_user and model.count_tokens(fitted.messages) <= 300
    info = StreamInfo()
    text = "".join([d async for d in model.stream(fitted.messages, GenParams(
        max_new_tokens=2, temperature=0), info=info)])
    # the engine answered exactly the fitted prompt (its own count, not cut by its safety net)
    assert info.prompt_tokens == model.count_tokens(fitted.messages) <= 300
    assert text.strip() and info.completion_tokens == 2 and info.finish_reason == "length"


async def test_prompt_longer_than_context_is_cut_not_failed(model: LocalChatModel) -> None:
    info = StreamInfo()
    long = [{"role": "user", "content": "owl " * 1000}]
    async for _ in model.stream(long, GenParams(max_new_tokens=2, temperature=0), info=info):
        pass
    assert info.prompt_tokens < model.context_length
    assert info.finish_reason in ("stop", "length")


async def test_mixed_adapter_batch_and_hot_swap(model: LocalChatModel,
                                                adapters: dict[str, Path]) -> None:
    q = "What is the best time to see owls?"
    p = GenParams(max_new_tokens=8, temperature=0)
    base_alone, _ = await run(model, q, p, adapter=BASE)
    await model.set_adapter(adapters["vA"], "vA")
    await model.load_adapter(adapters["vB"], "vB")
    assert model.active_adapter == "vA"
    a_alone, a_info = await run(model, q, p)
    b_alone, b_info = await run(model, q, p, adapter="vB")
    assert (a_info.adapter, b_info.adapter) == ("vA", "vB")
    assert len({base_alone, a_alone, b_alone}) == 3  # the adapters really change the output
    mixed = await asyncio.gather(run(model, q, p), run(model, q, p, adapter="vB"),
                                 run(model, q, p, adapter=BASE), run(model, q, p))
    assert [t for t, _ in mixed] == [a_alone, b_alone, base_alone, a_alone]
    assert [i.adapter for _, i in mixed] == ["vA", "vB", None, "vA"]

    # hot swap under load: requests admitted on vA finish on vA, later ones use vB
    long = GenParams(max_new_tokens=24, temperature=0)
    a_long, _ = await run(model, q, long)
    started = asyncio.Event()

    async def watched() -> tuple[str, StreamInfo]:
        info, text = StreamInfo(), ""
        async for d in model.stream(ask(q), long, info=info):
            text += d
            started.set()
        return text, info

    old = [asyncio.create_task(watched()) for _ in range(3)]
    await started.wait()
    await model.set_adapter(adapters["vB"], "vB")
    assert model.active_adapter == "vB"
    new = await run(model, q, p)
    done = await asyncio.gather(*old)
    assert [t for t, _ in done] == [a_long] * 3  # no request lost or switched mid-answer
    assert [i.adapter for _, i in done] == ["vA"] * 3
    assert new == (b_alone, new[1]) and new[1].adapter == "vB"
    await model.set_adapter(None, None)
    assert (await run(model, q, p))[0] == base_alone


async def test_canary_share(embedded_model_dir: Path, adapters: dict[str, Path]) -> None:
    gen = make_model(embedded_model_dir, canary_share=0.5)
    model = next(gen)
    try:
        await model.set_adapter(adapters["vA"], "vA")
        await model.load_adapter(adapters["vB"], "vB")
        used = [(await run(model, "Hi", GenParams(max_new_tokens=1, temperature=0)))[1].adapter
                for _ in range(4)]
        assert sorted(str(u) for u in used) == ["vA", "vA", "vB", "vB"]
        assert model.stats()["canary"] == "vB"
    finally:
        await model.aclose()


async def test_corrupt_adapter_refused_previous_kept(model: LocalChatModel,
                                                     adapters: dict[str, Path],
                                                     tmp_path: Path) -> None:
    await model.set_adapter(adapters["vA"], "vA")
    expected, _ = await run(model, "Hello owl", GenParams(max_new_tokens=4, temperature=0))
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "adapter_config.json").write_text("{not json")
    bad_weights = tmp_path / "bad_weights"
    bad_weights.mkdir()
    (bad_weights / "adapter_config.json").write_text(
        (adapters["vA"] / "adapter_config.json").read_text())
    (bad_weights / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    wrong_shape = tmp_path / "wrong_shape"  # valid files, but for another architecture
    wrong_shape.mkdir()
    conf = json.loads((adapters["vA"] / "adapter_config.json").read_text())
    (wrong_shape / "adapter_config.json").write_text(json.dumps(conf))
    import torch
    from safetensors.torch import save_file

    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
               torch.zeros(4, 7)}, str(wrong_shape / "adapter_model.safetensors"))
    for bad in (tmp_path / "missing", bad_json, bad_weights, wrong_shape):
        with pytest.raises(AdapterError, match=r"kept|previous"):
            await model.set_adapter(bad, "v9")
        assert model.active_adapter == "vA"
    again, info = await run(model, "Hello owl", GenParams(max_new_tokens=4, temperature=0))
    assert (again, info.adapter) == (expected, "vA")
    await model.set_adapter(None, None)


def test_4bit_without_cuda_refused() -> None:
    model = LocalChatModel(ModelConfig(load_in_4bit=True), TEST_CACHE)
    with pytest.raises(ModelError, match="CUDA"):
        model.load()


def test_unloadable_model_id_says_what_to_do(tmp_path: Path) -> None:
    model = LocalChatModel(ModelConfig(name="no-such-org/no-such-model-xyz"), tmp_path)
    with pytest.raises(ModelError, match="offline") as exc:
        model.load()
    assert "huggingface-cli download" in str(exc.value) and "save_pretrained" in str(exc.value)


async def test_openai_backend_against_server_on_real_model(model: LocalChatModel,
                                                           adapters: dict[str, Path],
                                                           tmp_path: Path) -> None:
    import shutil

    from llm.openai_backend import OpenAIChatModel
    from llm.openai_server import OpenAIServer

    registry = tmp_path / "adapters"  # the server loads only <storage>/adapters/vNNNN folders
    shutil.copytree(adapters["vB"], registry / "v0002")

    q = "What do owls eat?"
    p = GenParams(max_new_tokens=6, temperature=0)
    direct, _ = await run(model, q, p, adapter=BASE)
    async with OpenAIServer(model, "127.0.0.1", 0, adapters_dir=registry) as server:
        remote = OpenAIChatModel(ModelConfig(backend="openai", base_url=server.base_url,
                                             name="embedded", timeout_s=30))
        try:
            info = StreamInfo()
            deltas = [d async for d in remote.stream(ask(q), p, adapter=BASE, info=info)]
            assert len(deltas) > 1 and "".join(deltas) == direct  # streamed, same greedy text
            assert info.completion_tokens >= 1 and info.finish_reason in ("stop", "length")
            # the vLLM-style runtime adapter loading goes through the real endpoint
            await remote.set_adapter(registry / "v0002", "v0002")
            b_direct, _ = await run(model, q, p, adapter="v0002")
            info = StreamInfo()
            via = "".join([d async for d in remote.stream(ask(q), p, info=info)])
            assert (via, info.adapter) == (b_direct, "v0002")
        finally:
            await remote.aclose()
