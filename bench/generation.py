"""Generation benchmark: single stream, 8 and 32 concurrent chats, naive loop. Prints ONE JSON line.

    python bench/generation.py                       # embedded model through LocalChatModel
    python bench/generation.py --backend openai --base-url http://127.0.0.1:8000/v1 --model NAME
    python bench/generation.py --compare-llamacpp    # also llama-cpp-python's server (serial)
    python bench/generation.py --compare-llamacpp --llama-server path/to/llama-server  # 8 slots
    python bench/generation.py --vllm http://127.0.0.1:8011/v1   # also a running vLLM
    python bench/generation.py --start-vllm   # starts vLLM with scripts/vllm.sh, stops it after

Prompts are ~200 tokens (chat template included); answers are sampled with the default
settings (temperature 0.3, top-p 0.9, repetition penalty 1.2, fixed seeds) and are exactly
--new-tokens long (``ignore_eos``, as vLLM's and llama.cpp's benchmarks do: otherwise the
aggregate depends on where eight sampled answers happen to end; ``--natural-length`` lets them
stop at end-of-text). tok/s counts completion tokens; aggregate figures divide by the wall time
from the first submission to the last token, TTFT is the time from submission to the first
streamed text. The naive baseline generates the same lengths (``min_new_tokens``). Five rounds
each measure one single stream and then 8 concurrent chats back to back; the figures are the
medians over the rounds, and ``speedup_vs_single`` is the median of the per-round ratios (listed
in ``speedup_vs_single_rounds``, the 8-chat rates in ``concurrent8_rounds``). No prompt is sent
twice (each request takes a new one from a pool of distinct prompts, the same sequence for every
server compared), so a server's prompt cache never skips a prefill a new chat would need.
Servers compared (llama.cpp, vLLM) are measured after the embedded model is closed, through
NightOwl's openai backend, which sends no ``seed`` with temperature > 0 (a seeded sampled
request kills vLLM CPU's engine), so their answers are sampled unseeded.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm.base import ChatMessage, ChatModel, GenParams, StreamInfo  # noqa: E402
from llm.config import ModelConfig  # noqa: E402

if TYPE_CHECKING:
    from llm.local import LocalChatModel
    from llm.local.loading import Loaded

TOPICS = ["owls", "bread", "rivers", "volcanoes", "chess", "bicycles", "tea", "glaciers",
          "libraries", "bees", "lighthouses", "comets", "gardens", "trains", "whales", "clocks"]
FILLER = ("NightOwl keeps its notes in a small knowledge base. Each note has a title, a short "
          "body and a source line. The assistant reads the notes before it answers and cites "
          "them with numbers in square brackets. ")


def prompts(n: int, count_tokens: Any, target: int = 200) -> list[list[ChatMessage]]:
    """``n`` distinct ~``target``-token chats (each has its own context: no shared prefix
    beyond the first words of the system prompt, so no prefix reuse can flatter the figures)."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        words = " ".join(f"({topic} {k}) {FILLER}" for k in range(8)).split(" ")
        msgs: list[ChatMessage] = []
        for n in range(0, len(words), 4):
            ctx = f"Note {i} is about {topic}. " + " ".join(words[:n])
            msgs = [{"role": "system", "content": f"You are a helpful assistant.\n{ctx}"},
                    {"role": "user", "content": f"Question {i}: tell me about {topic}."}]
            if count_tokens(msgs) >= target:
                break
        out.append(msgs)
    return out


async def run_one(model: ChatModel, msgs: list[ChatMessage], params: GenParams
                  ) -> dict[str, float]:
    info = StreamInfo()
    start = time.perf_counter()
    first = last = 0.0
    async for delta in model.stream(msgs, params, info=info):
        if delta and not first:
            first = time.perf_counter()
        last = time.perf_counter()
    n = info.completion_tokens
    decode = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    return {"ttft": (first or last) - start, "tokens": n, "end": last, "start": start,
            "decode_tok_s": decode}


async def concurrent(model: ChatModel, batch: list[list[ChatMessage]], params: list[GenParams]
                     ) -> dict[str, float]:
    t0 = time.perf_counter()
    res = await asyncio.gather(*(run_one(model, m, p) for m, p in zip(batch, params,
                                                                       strict=True)))
    wall = max(r["end"] for r in res) - t0
    ttfts = sorted(r["ttft"] for r in res)
    return {"tok_s": sum(r["tokens"] for r in res) / wall, "wall": wall,
            "p50": statistics.median(ttfts), "p95": ttfts[min(len(ttfts) - 1,
                                                              int(0.95 * len(ttfts)))]}


@dataclass(frozen=True)
class Workload:
    """Answer length (and whether answers run to it past end-of-text) of every request."""

    new_tokens: int
    fixed: bool = True
    rounds: int = 5  # single + 8-chat rounds of measure()

    def params(self, i: int) -> GenParams:
        return GenParams(max_new_tokens=self.new_tokens, temperature=0.3, top_p=0.9,
                         repetition_penalty=1.2, seed=1000 + i, ignore_eos=self.fixed)


class Pool:
    """Prompts handed out once each: no request repeats an earlier one, so a server that caches
    prompt prefixes (llama-server does by default) cannot skip a prefill that a new chat needs."""

    def __init__(self, ps: list[list[ChatMessage]]) -> None:
        self.ps, self.used = ps, 0

    def take(self, n: int) -> list[list[ChatMessage]]:
        if self.used + n > len(self.ps):
            raise SystemExit(f"bench: only {len(self.ps)} prompts; raise PROMPTS")
        self.used += n
        return self.ps[self.used - n:self.used]


PROMPTS = 100  # measure() takes 1 + 5 x 9 + 32 + 8, with_adapter() 3 + 8


async def measure(model: ChatModel, work: Workload, naive: Any, pool: Pool, repeats: int = 5
                  ) -> dict[str, Any]:
    await run_one(model, pool.take(1)[0], Workload(4, work.fixed).params(0))  # warm-up
    # ``repeats`` rounds, each one single stream followed at once by 8 concurrent chats: the
    # ratio is taken within a round and the median reported, so the drift of this shared 2-core
    # VM's speed (+-10 % from one minute to the next) falls on both sides of it
    singles, rounds = [], []
    for r in range(repeats):
        singles.append(await run_one(model, pool.take(1)[0], work.params(r)))
        rounds.append(await concurrent(model, pool.take(8), [work.params(i) for i in range(8)]))
    single_tok_s = statistics.median(r["decode_tok_s"] for r in singles)
    ttft_single = statistics.median(r["ttft"] for r in singles)
    ratios = [c["tok_s"] / s["decode_tok_s"] for s, c in zip(singles, rounds, strict=True)
              if s["decode_tok_s"]]
    c8 = {key: statistics.median(r[key] for r in rounds) for key in ("tok_s", "p50", "p95")}
    c32 = await concurrent(model, pool.take(32), [work.params(i) for i in range(32)])
    naive_ps = pool.take(8)
    naive_tok_s = await naive(naive_ps, [work.params(i) for i in range(8)])
    return {
        "single_tok_s": round(single_tok_s, 1), "ttft_single_s": round(ttft_single, 3),
        "concurrent8_tok_s": round(c8["tok_s"], 1), "concurrent32_tok_s": round(c32["tok_s"], 1),
        "ttft8_p50_s": round(c8["p50"], 3), "ttft8_p95_s": round(c8["p95"], 3),
        "ttft32_p50_s": round(c32["p50"], 3), "ttft32_p95_s": round(c32["p95"], 3),
        "naive_tok_s": round(naive_tok_s, 1),
        "speedup_vs_single": round(statistics.median(ratios), 2) if ratios else None,
        "speedup_vs_naive": round(c8["tok_s"] / naive_tok_s, 2) if naive_tok_s else None,
        "prompt_tokens": model.count_tokens(naive_ps[0]), "new_tokens": work.new_tokens,
        "fixed_length": work.fixed, "concurrent8_rounds": [round(r["tok_s"], 1) for r in rounds],
        "speedup_vs_single_rounds": [round(x, 2) for x in ratios],
    }


def hf_naive(model: LocalChatModel) -> Any:
    """One ``generate`` per request, sequentially (the baseline the service must beat)."""
    async def run(batch: list[list[ChatMessage]], params: list[GenParams]) -> float:
        import torch

        def work(loaded: Loaded) -> float:
            hf, tok = loaded.model, loaded.tokenizer
            tokens, t0 = 0, time.perf_counter()
            with torch.inference_mode():
                for msgs, p in zip(batch, params, strict=True):
                    ids = tok.apply_chat_template(msgs, add_generation_prompt=True,
                                                  return_tensors="pt", return_dict=True)
                    torch.manual_seed(p.seed or 0)
                    out = hf.generate(**ids, max_new_tokens=p.max_new_tokens, do_sample=True,
                                      temperature=p.temperature, top_p=p.top_p,
                                      repetition_penalty=p.repetition_penalty,
                                      min_new_tokens=p.max_new_tokens if p.ignore_eos else 0)
                    tokens += out.shape[1] - ids["input_ids"].shape[1]
            return tokens / (time.perf_counter() - t0)

        # On the service's own worker thread: the same thread (and OpenMP pool) as the service,
        # so the baseline is not slowed by a second pool competing for the cores.
        return float(await model.run_on_worker(work))
    return run


def sequential_naive(model: ChatModel) -> Any:
    async def run(batch: list[list[ChatMessage]], params: list[GenParams]) -> float:
        tokens, t0 = 0, time.perf_counter()
        for msgs, p in zip(batch, params, strict=True):
            tokens += int((await run_one(model, msgs, p))["tokens"])
        return tokens / (time.perf_counter() - t0)
    return run


async def bench_openai(base_url: str, name: str, work: Workload,
                       ps: list[list[ChatMessage]] | None = None) -> dict[str, Any]:
    from llm.openai_backend import OpenAIChatModel

    cfg = ModelConfig(backend="openai", base_url=base_url, name=name, max_queue=1000)
    model = OpenAIChatModel(cfg)
    try:
        ps = ps or prompts(PROMPTS, model.count_tokens)
        return await measure(model, work, sequential_naive(model), Pool(ps), work.rounds)
    finally:
        await model.aclose()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Workload(args.new_tokens, fixed=not args.natural_length, rounds=args.rounds)
    if args.backend == "openai":
        result = await bench_openai(args.base_url, args.model, work)
        result["backend"] = f"openai {args.base_url}"
        return result
    from llm.local import LocalChatModel

    cfg = ModelConfig(max_batch_size=args.batch, max_queue=1000, threads=args.threads)
    model = await LocalChatModel.open(cfg, Path(args.storage), say=lambda s: None)
    try:
        ps = prompts(PROMPTS, model.count_tokens)  # llama.cpp, if compared, gets the same
        pool = Pool(ps)
        result = await measure(model, work, hf_naive(model), pool, work.rounds)
        if args.adapter:
            result.update(await with_adapter(model, pool, work))
    finally:
        await model.aclose()
    result["backend"] = f"local batch={args.batch}"
    if args.compare_llamacpp:
        result.update(await compare_llamacpp(args, result, ps, work))
    if args.vllm or args.start_vllm:
        result.update(await compare_vllm(args, result, ps, work))
    return result


def side_by_side(prefix: str, ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """``theirs`` (a server measured on the same prompts) under ``prefix``, with our ratios."""
    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 2) if b else None

    return {f"{prefix}_single_tok_s": theirs["single_tok_s"],
            f"{prefix}_ttft_single_s": theirs["ttft_single_s"],
            f"{prefix}8_tok_s": theirs["concurrent8_tok_s"],
            f"{prefix}32_tok_s": theirs["concurrent32_tok_s"],
            f"{prefix}_ttft8_p50_s": theirs["ttft8_p50_s"],
            f"{prefix}_ttft8_p95_s": theirs["ttft8_p95_s"],
            f"ratio_single_vs_{prefix}": ratio(ours["single_tok_s"], theirs["single_tok_s"]),
            f"ratio_vs_{prefix}": ratio(ours["concurrent8_tok_s"], theirs["concurrent8_tok_s"]),
            f"ratio_ttft8_vs_{prefix}": ratio(ours["ttft8_p50_s"], theirs["ttft8_p50_s"])}


async def compare_vllm(args: argparse.Namespace, ours: dict[str, Any],
                       ps: list[list[ChatMessage]], work: Workload) -> dict[str, Any]:
    """vLLM on the same prompts: ``--vllm URL`` (running), or ``--start-vllm`` (scripts/vllm.sh
    in a run dir of its own on a free port, stopped afterwards)."""
    import socket
    import subprocess
    import tempfile

    if args.vllm:
        theirs = await bench_openai(args.vllm, args.model, work, ps)
        return {"vllm": args.vllm, **side_by_side("vllm", ours, theirs)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = str(ROOT / "scripts" / "vllm.sh")
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as run_dir:
        env = {**os.environ, "NIGHTOWL_VLLM_RUN_DIR": run_dir}
        t0 = time.perf_counter()
        started = await asyncio.to_thread(
            subprocess.run, ["bash", script, "start", "--port", str(port), "--storage",
                             args.storage], env=env, capture_output=True, text=True)
        start_s = time.perf_counter() - t0
        try:
            if started.returncode != 0:
                raise SystemExit(f"bash scripts/vllm.sh start failed:\n{started.stderr[-2000:]}")
            theirs = await bench_openai(f"http://127.0.0.1:{port}/v1", "embedded", work, ps)
        finally:
            await asyncio.to_thread(subprocess.run, ["bash", script, "stop"], env=env,
                                    capture_output=True)
    return {"vllm": "scripts/vllm.sh (vLLM CPU, LoRA on)", "vllm_start_s": round(start_s, 1),
            **side_by_side("vllm", ours, theirs)}


async def with_adapter(model: LocalChatModel, pool: Pool, work: Workload) -> dict[str, Any]:
    """Single stream and 8 concurrent chats with a LoRA adapter active (the state after the first
    nightly training): a random r=16 adapter on every linear layer, like [training]'s default."""
    import tempfile

    def make(folder: Path) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from llm.embedded import converted_dir

        base = AutoModelForCausalLM.from_pretrained(converted_dir(Path(model.storage_dir)),
                                                    dtype=torch.float32)
        lora = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=1e-3)
        lora.save_pretrained(str(folder))

    with tempfile.TemporaryDirectory() as tmp:
        await model.run_on_worker(lambda _: make(Path(tmp)))  # torch work on the worker thread
        await model.set_adapter(Path(tmp), "bench")
        singles = [await run_one(model, msgs, work.params(i))
                   for i, msgs in enumerate(pool.take(3))]
        c8 = await concurrent(model, pool.take(8), [work.params(i) for i in range(8)])
        await model.set_adapter(None, None)
    return {"adapter_single_tok_s": round(statistics.median(r["decode_tok_s"] for r in singles), 1),
            "adapter_concurrent8_tok_s": round(c8["tok_s"], 1),
            "adapter_ttft8_p95_s": round(c8["p95"], 3)}


def llamacpp_command(args: argparse.Namespace, port: int) -> tuple[list[str], str] | None:
    """The command line of the llama.cpp server to compare against, and a label; None if none.

    ``--llama-server BIN`` (llama.cpp's C++ ``llama-server``) runs with 8 parallel slots and
    continuous batching, the way a user would deploy it. Without it, llama-cpp-python's server is
    used: it has no parallel slots and answers one request at a time.
    """
    from llm.embedded import gguf_path

    threads = str(args.threads or os.cpu_count() or 1)
    if args.llama_server:
        return ([args.llama_server, "-m", str(gguf_path()), "--host", "127.0.0.1", "--port",
                 str(port), "-c", "8192", "-np", "8", "-t", threads, "-tb", threads,
                 "--alias", "embedded"], "llama-server -np 8")
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    return ([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()),
             "--model_alias", "embedded", "--host", "127.0.0.1", "--port", str(port),
             "--n_ctx", "8192", "--n_threads", threads, "--n_threads_batch", threads],
            "llama-cpp-python server (one request at a time)")


async def compare_llamacpp(args: argparse.Namespace, ours: dict[str, Any],
                           ps: list[list[ChatMessage]], work: Workload) -> dict[str, Any]:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = llamacpp_command(args, port)
    if command is None:
        return {"llamacpp": "skipped: pass --llama-server PATH (llama.cpp's llama-server) or "
                            "install llama-cpp-python (pip install 'llama-cpp-python[server]', "
                            "a ~5 min source build)"}
    argv, label = command
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(240):
                if proc.returncode is not None:
                    raise SystemExit(f"{label} exited with {proc.returncode}: {' '.join(argv)}")
                try:
                    r = await client.get(f"http://127.0.0.1:{port}/v1/models", timeout=1.0)
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
        theirs = await bench_openai(f"http://127.0.0.1:{port}/v1", "embedded", work,
                                    ps)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
    return {"llamacpp_server": label,
            "llamacpp_single_tok_s": theirs["single_tok_s"],
            "llamacpp_ttft_single_s": theirs["ttft_single_s"],
            "llamacpp8_tok_s": theirs["concurrent8_tok_s"],
            "llamacpp_ttft8_p50_s": theirs["ttft8_p50_s"],
            "llamacpp_ttft8_p95_s": theirs["ttft8_p95_s"],
            "ratio_vs_llamacpp": round(ours["concurrent8_tok_s"] / theirs["concurrent8_tok_s"], 2)
            if theirs["concurrent8_tok_s"] else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("local", "openai"), default="local")
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--model", default="embedded", help="model name sent to an openai server")
    ap.add_argument("--storage", default=str(ROOT / "var"), help="storage dir (model cache)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32, help="max_batch_size of the local service")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compare-llamacpp", action="store_true")
    ap.add_argument("--natural-length", action="store_true",
                    help="let answers stop at end-of-text instead of --new-tokens exactly")
    ap.add_argument("--adapter", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure with a LoRA adapter active (default: yes)")
    ap.add_argument("--llama-server", default="",
                    help="llama.cpp's llama-server binary for --compare-llamacpp (8 slots)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of one single stream + 8 concurrent chats (medians reported)")
    ap.add_argument("--vllm", default="", metavar="URL",
                    help="also measure a running vLLM at URL (ending in /v1), same prompts")
    ap.add_argument("--start-vllm", action="store_true",
                    help="also measure vLLM, started (and stopped) with scripts/vllm.sh")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    if args.compare_llamacpp and not args.llama_server and \
            importlib.util.find_spec("llama_cpp") is None:
        print("note: --compare-llamacpp needs --llama-server PATH or llama-cpp-python (pip "
              "install 'llama-cpp-python[server]'); running without the comparison",
              file=sys.stderr)
    print(json.dumps(asyncio.run(main_async(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
