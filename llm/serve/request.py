"""What a chat request may ask for: OpenAI's fields, each checked and capped.

Fields understood: messages, stream, stream_options.include_usage, model, max_tokens /
max_completion_tokens, temperature, top_p, stop (string or list), seed, repetition_penalty (also
llama.cpp's repeat_penalty) and ignore_eos (vLLM's and llama.cpp's, for benchmarks).

Invariants (``[serve]``): at most ``max_messages`` messages, ``max_stop`` stop strings of at most
``max_stop_chars`` characters each (stop strings are checked on every token in the model's one
worker thread, so their total size bounds everyone's decoding cost), ``max_tokens`` at most
``[serve] max_tokens``; ``ignore_eos`` only when ``allow_ignore_eos`` (a client could otherwise
hold a batch slot for ``max_tokens`` on every request). A refusal says which limit and how big.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm.base import ChatMessage, GenParams
from llm.config import ServeConfig
from llm.serve.guard import Refused

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class ChatRequest:
    messages: list[ChatMessage]
    params: GenParams
    model: str  # what the client asked for ("" = the served model)
    stream: bool
    include_usage: bool


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _messages(raw: Any, cfg: ServeConfig) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise Refused(400, "messages must be a non-empty list")
    if len(raw) > cfg.max_messages:
        raise Refused(400, f"too many messages ({len(raw)}); at most {cfg.max_messages}")
    out: list[ChatMessage] = []
    for m in raw:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise Refused(400, "each message needs a role: system, user or assistant")
        out.append({"role": ROLES[m["role"]], "content": _content(m.get("content"))})
    return out


def _stop(raw: Any, cfg: ServeConfig) -> tuple[str, ...]:
    stop = [raw] if isinstance(raw, str) else raw or []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise Refused(400, "stop must be a string or a list of strings")
    stop = [s for s in stop if s]
    if len(stop) > cfg.max_stop:
        raise Refused(400, f"too many stop strings ({len(stop)}); at most {cfg.max_stop}")
    if any(len(s) > cfg.max_stop_chars for s in stop):
        raise Refused(400, f"a stop string is longer than {cfg.max_stop_chars} characters")
    return tuple(stop)


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused(400, f"{key} must be a number")
    return float(value)


def _params(body: dict[str, Any], cfg: ServeConfig, defaults: GenParams) -> GenParams:
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool)
                                   or not isinstance(max_tokens, int)
                                   or not 1 <= max_tokens <= cfg.max_tokens):
        raise Refused(400, f"max_tokens must be an integer from 1 to {cfg.max_tokens}")
    ignore_eos = body.get("ignore_eos", False) is True
    if ignore_eos and not cfg.allow_ignore_eos:
        raise Refused(400, "ignore_eos is switched off on this server ([serve] "
                      "allow_ignore_eos = true enables it, for benchmarks)")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise Refused(400, "seed must be an integer")
    rp = body.get("repetition_penalty", body.get("repeat_penalty"))
    params = GenParams(
        max_new_tokens=min(max_tokens or defaults.max_new_tokens, cfg.max_tokens),
        temperature=_number(body, "temperature", defaults.temperature),
        top_p=_number(body, "top_p", defaults.top_p),
        repetition_penalty=_number({"repetition_penalty": rp}, "repetition_penalty",
                                   defaults.repetition_penalty),
        stop=_stop(body.get("stop"), cfg), seed=seed, ignore_eos=ignore_eos)
    if not 0.0 <= params.temperature <= 2.0:
        raise Refused(400, "temperature must be between 0 and 2")
    if not 0.0 < params.top_p <= 1.0:
        raise Refused(400, "top_p must be in (0, 1]")
    if not 0.5 <= params.repetition_penalty <= 3.0:
        raise Refused(400, "repetition_penalty must be between 0.5 and 3")
    return params


def parse_chat(body: Any, cfg: ServeConfig, defaults: GenParams) -> ChatRequest:
    """The checked request, or :class:`Refused` (400) naming the field and the limit."""
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    options = body.get("stream_options")
    return ChatRequest(
        messages=_messages(body.get("messages"), cfg),
        params=_params(body, cfg, defaults),
        model=str(body.get("model") or ""),
        stream=bool(body.get("stream")),
        include_usage=isinstance(options, dict) and bool(options.get("include_usage")))
