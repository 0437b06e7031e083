"""Probe an OpenAI-compatible server (vLLM) with N concurrent chat completions; print one JSON line.

    .venv/bin/python scripts/vllm_probe.py --url http://127.0.0.1:8011/v1 --n 32
    .venv/bin/python scripts/vllm_probe.py --n 32 --no-seed          # the same without `seed`
    .venv/bin/python scripts/vllm_probe.py --n 2 --prompt-tokens 1900,400 --stagger 0.5

Each request sends what NightOwl's openai backend sends (model, messages, stream, max_tokens,
temperature, top_p, stream_options.include_usage, extra body repetition_penalty/repeat_penalty,
ignore_eos, seed) unless switched off. Prompts are distinct (a random salt starts each run's
prompts, so vLLM's prefix cache never skips a prefill), about --prompt-tokens long (a comma
list is cycled over the requests). Every request has a bounded read timeout, so a hung stream
is reported as "timeout", never waited on forever. Afterwards it checks GET /v1/models and
GET /health (a vLLM whose engine died answers /health with 503 and exits seconds later);
--watch S polls both plus a tiny chat for S seconds to show that sequence.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

import httpx

FILLER = ("Note {i} of the knowledge base about {topic}: it has a title, a short body and a "
          "source line; the assistant cites it with its number. ")
TOPICS = ["owls", "bread", "rivers", "volcanoes", "chess", "bicycles", "tea", "glaciers"]


def prompt(i: int, tokens: int, salt: str) -> list[dict[str, str]]:
    topic = TOPICS[i % len(TOPICS)]
    body = f"Run {salt}, request {i} is about {topic}. " + "".join(
        FILLER.format(i=f"{i}.{k}", topic=topic) for k in range(max(1, tokens // 30)))
    return [{"role": "system", "content": f"You are a helpful assistant.\n{body}"},
            {"role": "user", "content": f"Question {i}: tell me about {topic}."}]


def body(args: argparse.Namespace, i: int, tokens: int) -> dict[str, Any]:
    b: dict[str, Any] = {"model": args.model, "messages": prompt(i, tokens, args.salt),
                         "stream": not args.no_stream, "max_tokens": args.max_tokens,
                         "temperature": args.temperature}
    if args.top_p is not None:
        b["top_p"] = args.top_p
    if not args.no_stream:
        b["stream_options"] = {"include_usage": True}
    if args.repetition_penalty is not None:
        b["repetition_penalty"] = b["repeat_penalty"] = args.repetition_penalty
    if args.ignore_eos:
        b["ignore_eos"] = True
    if not args.no_seed:
        b["seed"] = args.seed_base + i
    return b


async def one(client: httpx.AsyncClient, args: argparse.Namespace, i: int, tokens: int
              ) -> dict[str, Any]:
    await asyncio.sleep(i * args.stagger)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"i": i, "outcome": "ok", "tokens": 0, "ttft": None}
    try:
        async with client.stream("POST", "/chat/completions", json=body(args, i, tokens)) as r:
            out["status"] = r.status_code
            if r.status_code != 200:
                out["outcome"] = "http_error"
                out["error"] = (await r.aread()).decode(errors="replace")[:500]
                return out
            if args.no_stream:
                data = json.loads(await r.aread())
                out["tokens"] = data.get("usage", {}).get("completion_tokens", 0)
                out["prompt_tokens"] = data.get("usage", {}).get("prompt_tokens")
                return out
            done = False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    done = True
                    out["done"] = True
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    out["outcome"] = "stream_error"
                    out["error"] = json.dumps(chunk)[:500]
                    continue
                if chunk.get("usage"):
                    out["prompt_tokens"] = chunk["usage"].get("prompt_tokens")
                    out["tokens"] = chunk["usage"].get("completion_tokens", out["tokens"])
                for c in chunk.get("choices") or []:
                    if (c.get("delta") or {}).get("content") and out["ttft"] is None:
                        out["ttft"] = time.perf_counter() - t0
                    if c.get("finish_reason"):
                        out["finish_reason"] = c["finish_reason"]
            if not done and out["outcome"] == "ok":
                out["outcome"] = "no_done"  # the stream closed without [DONE]
    except httpx.TimeoutException as exc:
        out["outcome"] = "timeout"
        out["error"] = f"{type(exc).__name__} after {time.perf_counter() - t0:.1f}s"
    except httpx.HTTPError as exc:
        out["outcome"] = "transport_error"
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        out["elapsed"] = round(time.perf_counter() - t0, 3)
        out["end"] = time.perf_counter()
    return out


async def health(url: str) -> dict[str, Any]:
    root = url.rsplit("/v1", 1)[0]
    res: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=10) as c:
        for name, u in (("models", f"{url}/models"), ("health", f"{root}/health")):
            try:
                r = await c.get(u)
                res[name] = r.status_code
                if r.status_code != 200:
                    res[f"{name}_body"] = r.text[:300]
            except httpx.HTTPError as exc:
                res[name] = f"{type(exc).__name__}"
    return res


async def watch(args: argparse.Namespace, seconds: float) -> list[str]:
    """After the load: every 0.5 s, GET /v1/models and one tiny chat; the status sequence."""
    seen: list[str] = []
    end = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=args.url, timeout=5.0) as c:
        while time.perf_counter() < end:
            t = f"{seconds - (end - time.perf_counter()):.1f}s"
            m: int | str
            try:
                m = (await c.get("/models")).status_code
            except httpx.HTTPError as exc:
                m = type(exc).__name__
            try:
                r = await c.post("/chat/completions", json={
                    "model": args.model, "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}]})
                chat = f"{r.status_code} {r.text[:160]}"
            except httpx.HTTPError as exc:
                chat = type(exc).__name__
            seen.append(f"{t} models={m} chat={chat}")
            await asyncio.sleep(0.5)
    return seen


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8011/v1")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--n", type=int, default=32, help="concurrent requests")
    ap.add_argument("--prompt-tokens", default="200", help="approx. tokens, comma list cycled")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.3)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--no-top-p", dest="top_p", action="store_const", const=None)
    ap.add_argument("--repetition-penalty", type=float, default=1.2)
    ap.add_argument("--no-repetition-penalty", dest="repetition_penalty",
                    action="store_const", const=None)
    ap.add_argument("--no-seed", action="store_true")
    ap.add_argument("--seed-base", type=int, default=1000)
    ap.add_argument("--ignore-eos", action="store_true", default=True)
    ap.add_argument("--natural-length", dest="ignore_eos", action="store_false")
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--stagger", type=float, default=0.0, help="seconds between submissions")
    ap.add_argument("--timeout", type=float, default=60.0, help="read timeout per request")
    ap.add_argument("--salt", default=uuid.uuid4().hex[:8],
                    help="text at the start of every prompt (random: no prefix-cache hits)")
    ap.add_argument("--watch", type=float, default=0.0,
                    help="after the load, poll /v1/models + a tiny chat for this many seconds")
    ap.add_argument("--details", action="store_true", help="list every request")
    args = ap.parse_args()
    sizes = [int(s) for s in args.prompt_tokens.split(",")]
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    limits = httpx.Limits(max_connections=args.n + 4)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=args.url, timeout=timeout, limits=limits) as client:
        res = await asyncio.gather(*(one(client, args, i, sizes[i % len(sizes)])
                                     for i in range(args.n)))
    wall = max(r["end"] for r in res) - t0
    outcomes: dict[str, int] = {}
    for r in res:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    errors = sorted({r["error"] for r in res if r.get("error")})
    ttfts = sorted(r["ttft"] for r in res if r["ttft"] is not None)
    toks = sum(r["tokens"] for r in res)
    summary: dict[str, Any] = {
        "n": args.n, "seed": not args.no_seed, "temperature": args.temperature,
        "top_p": args.top_p, "repetition_penalty": args.repetition_penalty,
        "prompt_tokens": sorted({r.get("prompt_tokens") for r in res
                                 if r.get("prompt_tokens")}),
        "outcomes": outcomes, "wall_s": round(wall, 2), "completion_tokens": toks,
        "tok_s": round(toks / wall, 1) if wall > 0 else 0.0,
        "ttft_p50": round(ttfts[len(ttfts) // 2], 3) if ttfts else None,
        "ttft_max": round(ttfts[-1], 3) if ttfts else None,
        "errors": errors[:3], "after": await health(args.url)}
    if args.watch > 0:
        summary["watch"] = await watch(args, args.watch)
    if args.details:
        summary["requests"] = [{k: v for k, v in r.items() if k != "end"} for r in res]
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
