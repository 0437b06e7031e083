"""LocalChatModel: transformers + peft in this process, with continuous batching.

One worker thread owns the model; the asyncio event loop never runs model code. Requests wait in a
bounded FIFO queue (``[model] max_queue``) and join the running batch (at most ``[model]
max_batch_size`` rows) between decode steps: the requests waiting at that moment (up to 8) are
prefilled together, packed into one row without padding (one forward pass per adapter among
them; attention stays within each prompt; prompts that arrive together get their first tokens
together), then each prompt's K/V is copied to end in the last column and merged into the batch
cache, left-padded. Every decode step runs ONE
forward pass for all running requests; each row samples with its own settings (greedy when
temperature is 0, top-p, repetition penalty, seed), checks its own stop strings / EOS /
``max_new_tokens`` and leaves the batch when done; columns that only hold padding are trimmed. Text
deltas go back to each caller through ``loop.call_soon_threadsafe`` into its ``asyncio.Queue``;
cancelling the consumer removes the request from the queue or the batch before the next step (its
slot is free immediately).

Adapters (LoRA through peft), semantics:
* ``set_adapter(path, version)`` loads the adapter between two decode steps and makes it the
  active one. It never reloads the base model and never drops a request: every request is
  *pinned* to the adapter that was active when it was admitted into the batch, so requests
  started on the old adapter finish on it while new ones use the new adapter (no draining). The
  old adapter is unloaded once no running request uses it. A missing/corrupt directory raises
  AdapterError and the previous adapter stays active.
* ``load_adapter(path, version)`` loads an extra adapter without activating it; requests can ask
  for it explicitly (``stream(..., adapter=version)``), and the most recently loaded extra adapter
  is the canary: it answers ``[model] canary_share`` of the requests that ask for ACTIVE
  (deterministically: every 1/share-th request). ``set_canary`` changes that.
* A decode step whose rows use different adapters runs in one forward pass with peft's
  ``adapter_names``; a uniform batch uses the faster plain path (the active adapter merged into
  the packed weights on the CPU). A prefill packs each adapter's prompts into a pass of its own.
* ``StreamInfo.adapter`` is the version that actually answered (None = base model).

Speed notes (2-core AVX-512 CPU, SmolLM2-135M): bf16 is picked automatically where the CPU/GPU
supports it (~2x fp32). Decode steps use the grouped-query kernel of :mod:`llm.attention`
(SDPA's padded path was the bottleneck of batched decoding). The KV cache of each request is
kept (never recomputed) and merged into the batch cache; decode steps append K/V in place into
buffers with spare room instead of copying the whole cache per step (``_grow_layer_class``).
Streamed text is handed to the event loop once per step, not once per row and token.
``[model] threads`` = 0 uses every core; on a machine shared with other busy processes 1 thread
can be faster (no spin-waiting).
Greedy output in float32 is identical alone and in a batch (and equal to transformers'
``generate``); in bf16 a batched matmul may round differently and flip a near-tie.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm.adapters import validate_adapter_dir
from llm.attention import PACKED_MARK
from llm.base import ACTIVE, BASE, ChatMessage, GenParams, StreamInfo
from llm.config import ModelConfig
from llm.decode import IncrementalDecoder, StopChecker, sample_batch
from llm.errors import AdapterError, BusyError, ModelError
from llm.malloc import keep_freed_memory
from llm.prepack import PackedWeights, prepack_linears

log = logging.getLogger("nightowl.llm")

_BASE_NAME = "__base__"  # peft's adapter_names value for "no adapter"


@dataclass(eq=False)
class _Request:
    messages: list[ChatMessage]
    params: GenParams
    selector: str
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[tuple[str, Any]]
    cancelled: bool = False
    finished: bool = False
    outbox: list[tuple[_Request, str, Any]] | None = None  # the worker's, flushed once a step

    def send(self, kind: str, payload: Any = None) -> None:
        if self.outbox is not None:
            self.outbox.append((self, kind, payload))
            return
        self.deliver(kind, payload)

    def deliver(self, kind: str, payload: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, (kind, payload))
        except RuntimeError:  # the caller's loop is closed: nobody is listening any more
            self.cancelled = True


@dataclass(eq=False)
class _Row:
    req: _Request
    version: str | None  # adapter version label answering this request
    name: str | None  # peft adapter name (None = base)
    decoder: IncrementalDecoder
    stops: StopChecker
    seen: Any  # torch.LongTensor of token ids for the repetition penalty
    max_new: int
    generator: Any = None
    generated: int = 0
    pos: int = 0  # position id of the last sampled token (the next decode input)
    last: int = 0  # last sampled token (next decode input)
    done: str = ""  # finish reason once finished
    seen_set: set[int] = field(default_factory=set)


def _grow_layer_class() -> Any:
    """A DynamicLayer that appends into spare capacity instead of ``torch.cat`` per step.

    transformers' DynamicLayer copies the whole K/V cache of the batch at every decode step
    (``torch.cat``); with 8 rows x 300 tokens x 30 layers that is ~55 MB per step. This layer
    keeps K/V as views into a buffer with room for ``_GROW`` more tokens and writes the new
    token in place; any outside reassignment of ``keys``/``values`` (merge, drop, trim) is
    noticed and the next update starts a new buffer.
    """
    from transformers.cache_utils import DynamicLayer

    class GrowLayer(DynamicLayer):
        _kbuf: Any = None
        _vbuf: Any = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any
                   ) -> tuple[Any, Any]:
            import torch

            if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
                return super().update(key_states, value_states, *args, **kwargs)
            keys: Any = self.keys
            values: Any = self.values
            n, add = keys.shape[-2], key_states.shape[-2]
            kbuf, vbuf = self._kbuf, self._vbuf
            fresh = (kbuf is None or keys.data_ptr() != kbuf.data_ptr()
                     or values.data_ptr() != vbuf.data_ptr()
                     or kbuf.shape[0] != keys.shape[0] or n + add > kbuf.shape[-2]
                     or keys.stride() != kbuf.stride())
            if fresh:
                shape = list(keys.shape)
                shape[-2] = n + add + _GROW
                kbuf = torch.zeros(shape, dtype=keys.dtype, device=keys.device)
                vbuf = torch.zeros(shape, dtype=values.dtype, device=values.device)
                kbuf[:, :, :n].copy_(keys)
                vbuf[:, :, :n].copy_(values)
                self._kbuf, self._vbuf = kbuf, vbuf
            kbuf[:, :, n:n + add].copy_(key_states)
            vbuf[:, :, n:n + add].copy_(value_states)
            self.keys, self.values = kbuf[:, :, :n + add], vbuf[:, :, :n + add]
            return self.keys, self.values

    return GrowLayer


_PREFILL_ROWS = 8  # requests prefilled in one forward pass (more: later ones wait for the rest)
_GROW = 64  # spare decode positions per K/V buffer (re-allocated when full)


class LocalChatModel:
    """ChatModel on transformers + peft. Build it with ``await LocalChatModel.open(...)``."""

    def __init__(self, cfg: ModelConfig, storage_dir: Path,
                 say: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.storage_dir = Path(storage_dir)
        self.say = say or log.info
        self.name = cfg.name
        self.context_length = cfg.context_length
        self._lock = threading.Condition()
        self._waiting: collections.deque[_Request] = collections.deque()
        self._commands: list[Callable[[], None]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._rows: list[_Row] = []
        self._cache: Any = None  # DynamicCache of the running batch
        self._mask: Any = None  # [rows, cache_len] attention mask (1 = real token)
        self._active: str | None = None
        self._canary: str | None = None
        self._canary_credit = 0.0
        self._adapters: dict[str, tuple[str, Path]] = {}  # version -> (peft name, path)
        self._retired: set[str] = set()  # versions to unload when no row uses them
        self._adapter_seq = 0
        self._peft: Any = None
        self._packed: PackedWeights | None = None  # CPU: packed layers (+ merged active adapter)
        self._lora_on = True  # peft's LoRA layers enabled (off while running merged weights)
        self._model: Any = None
        self._tok: Any = None  # worker thread's tokenizer
        self._count_tok: Any = None  # event loop's tokenizer (tokenizers are not shared)
        self._eos: set[int] = set()
        self._torch: Any = None
        self._device = "cpu"
        self._dtype: Any = None
        self._threads = 0
        # messages for callers, sent in ONE call_soon_threadsafe per loop and step (not one per
        # token and row: fewer wake-ups of the event loop competing with the worker)
        self._outbox: list[tuple[_Request, str, Any]] = []
        self._grow: Any = None  # K/V cache layer class with spare capacity (see _grow_layer_class)
        # False once the model showed that it does not pass the packing kwargs on to the
        # attention kernel (an architecture outside transformers' attention interface): each
        # prompt is then prefilled on its own
        self._packing = True
        self._tokens_window: collections.deque[tuple[float, int]] = collections.deque()
        self._served = 0

    # ---- loading -----------------------------------------------------------------------------
    @classmethod
    async def open(cls, cfg: ModelConfig, storage_dir: Path,
                   say: Callable[[str], None] | None = None) -> LocalChatModel:
        """Load the model in a thread and start the worker."""
        self = cls(cfg, storage_dir, say)
        await asyncio.to_thread(self.load)
        return self

    def load(self) -> None:
        """Blocking load (model + tokenizers) and worker start; ``open`` runs it in a thread.

        The worker thread loads the model itself, so that ONE thread runs every torch op of the
        model: OpenMP keeps a thread pool per calling thread, and a second pool (the loading
        thread's) made each decode step ~1.5x slower on the 2-core CPU.
        """
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                self._load_model()
            except BaseException as exc:
                failure.append(exc)
                return
            finally:
                ready.set()
            self._run()

        self._thread = threading.Thread(target=main, name="nightowl-model", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        self.say(f"Model {self.cfg.name} ready ({self._device}, "
                 f"{str(self._dtype).removeprefix('torch.')}, {self._threads} threads, "
                 f"context {self.context_length}).")

    def _load_model(self) -> None:
        """Worker thread: load the tokenizers and the model (and prepack it on the CPU)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llm.embedded import resolve_model_path

        self._torch = torch
        cuda = torch.cuda.is_available()
        quant = "4-bit" if self.cfg.load_in_4bit else "8-bit" if self.cfg.load_in_8bit else ""
        if quant and not cuda:
            raise ModelError(f"[model] load_in_{quant[0]}bit needs a CUDA GPU (bitsandbytes), and "
                             "this machine has none. Set load_in_4bit = false and "
                             "load_in_8bit = false to run on the CPU in bf16/fp32.")
        device = ("cuda" if cuda else "cpu") if self.cfg.device == "auto" else self.cfg.device
        dtype = self._pick_dtype(torch, device)
        threads = self._threads = self.cfg.threads or os.cpu_count() or 1
        if device == "cpu":
            torch.set_num_threads(threads)
        path = resolve_model_path(self.cfg.name, self.storage_dir, self.say)
        from llm.attention import register

        kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True,
                                  "attn_implementation": register()}
        if quant:
            try:
                from transformers import BitsAndBytesConfig
                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=self.cfg.load_in_4bit, load_in_8bit=self.cfg.load_in_8bit,
                    bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.bfloat16)
                kwargs["device_map"] = {"": device}
            except ImportError as exc:
                raise ModelError("4/8-bit loading needs bitsandbytes: "
                                 "pip install 'nightowl[gpu]'") from exc
        try:
            self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self._count_tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as exc:
            hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
            raise ModelError(
                f"cannot load model {self.cfg.name!r} offline ({type(exc).__name__}: {exc}). "
                "NightOwl never downloads at run time: set [model] name to a local folder saved "
                "with save_pretrained (config.json, *.safetensors, tokenizer files), or fetch it "
                f"once with `huggingface-cli download {self.cfg.name}` into the HF cache "
                f"({hf_home}), or use name = \"embedded\".") from exc
        if not quant:
            model.to(device)
        model.eval()
        if device == "cpu" and self.cfg.cpu_keep_freed_memory:
            keep_freed_memory()
        if device == "cpu" and self.cfg.cpu_prepack:
            self._packed = prepack_linears(model, batch_hint=self.cfg.max_batch_size)
            log.info("prepacked %d linear layers for oneDNN", len(self._packed or []))
        self._model = model
        self._device = device
        self._dtype = dtype
        max_pos = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.context_length = min(self.cfg.context_length, max_pos) if max_pos else \
            self.cfg.context_length
        eos = model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self._tok.eos_token_id is not None:
            self._eos.add(int(self._tok.eos_token_id))

    def _pick_dtype(self, torch: Any, device: str) -> Any:
        if self.cfg.dtype != "auto":
            return getattr(torch, self.cfg.dtype)
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        try:
            bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except Exception:
            bf16 = False
        return torch.bfloat16 if bf16 else torch.float32

    # ---- ChatModel API -----------------------------------------------------------------------
    @property
    def active_adapter(self) -> str | None:
        return self._active

    def _render(self, tok: Any, messages: Sequence[ChatMessage]) -> list[int]:
        text = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return list(tok.encode(text, add_special_tokens=False))

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        if self._count_tok is None:
            raise ModelError("the model is not loaded yet; use `await LocalChatModel.open(...)`")
        return len(self._render(self._count_tok, messages))

    async def stream(self, messages: Sequence[ChatMessage], params: GenParams | None = None, *,
                     adapter: str = ACTIVE, info: StreamInfo | None = None) -> AsyncIterator[str]:
        if self._thread is None or self._stopping:
            raise ModelError("the model service is not running (closed or not loaded)")
        if adapter not in (ACTIVE, BASE) and adapter not in self._adapters:
            raise AdapterError(f"adapter {adapter!r} is not loaded; load it with "
                               "load_adapter() first (loaded: "
                               f"{', '.join(self._adapters) or 'none'})")
        req = _Request(list(messages), params or GenParams(), adapter,
                       asyncio.get_running_loop(), asyncio.Queue(), outbox=self._outbox)
        with self._lock:
            ahead = len(self._waiting)
            if ahead >= self.cfg.max_queue:
                raise BusyError(f"I'm busy right now: you would be number {ahead + 1} in line "
                                f"and the line holds {self.cfg.max_queue}. Please try again in "
                                "a minute.", position=ahead + 1)
            self._waiting.append(req)
            self._lock.notify()
        if info is not None:
            info.queue_position = ahead + (len(self._rows) >= self.cfg.max_batch_size)
        try:
            while True:
                kind, payload = await req.out.get()
                if kind == "text":
                    if info is not None:
                        info.completion_tokens = payload[1]
                    if payload[0]:
                        yield payload[0]
                elif kind == "start":
                    if info is not None:
                        info.adapter, info.prompt_tokens = payload
                elif kind == "done":
                    if info is not None:
                        info.finish_reason, info.completion_tokens = payload
                    req.finished = True
                    return
                elif kind == "error":
                    req.finished = True
                    raise payload
        finally:
            if not req.finished:
                self._cancel(req)

    def _cancel(self, req: _Request) -> None:
        with self._lock:
            req.cancelled = True
            try:
                self._waiting.remove(req)
            except ValueError:
                pass  # running: the worker drops it before its next step
            self._lock.notify()

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            while self._tokens_window and now - self._tokens_window[0][0] > 10.0:
                self._tokens_window.popleft()
            toks = sum(n for _, n in self._tokens_window)
            span = now - self._tokens_window[0][0] if self._tokens_window else 0.0
            return {"backend": "local", "queue": len(self._waiting), "running": len(self._rows),
                    "tokens_per_s": round(toks / span, 1) if span > 0.5 else 0.0,
                    "adapter": self._active, "canary": self._canary,
                    "canary_share": self.cfg.canary_share if self._canary else 0.0,
                    "loaded_adapters": sorted(self._adapters), "served": self._served}

    async def aclose(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30.0)

    # ---- adapters ----------------------------------------------------------------------------
    async def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the worker thread between two decode steps; return its result."""
        if self._thread is None or self._stopping:
            raise ModelError("the model service is not running (closed or not loaded)")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def run() -> None:
            try:
                res = fn()
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, fut, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, fut, res, None)

        with self._lock:
            self._commands.append(run)
            self._lock.notify()
        return await fut

    async def set_adapter(self, path: Path | None, version: str | None) -> None:
        if path is None:
            await self._call(lambda: self._activate(None))
            return
        label = version or Path(path).name
        checked = validate_adapter_dir(Path(path))
        await self._call(lambda: self._activate(self._load_adapter(checked, label)))

    async def load_adapter(self, path: Path, version: str) -> None:
        checked = validate_adapter_dir(Path(path))

        def load() -> None:
            self._load_adapter(checked, version)
            self._canary = version if version != self._active else self._canary

        await self._call(load)

    def set_canary(self, version: str | None) -> None:
        """Choose which loaded adapter serves ``canary_share`` of ACTIVE requests (None = off)."""
        if version is not None and version not in self._adapters:
            raise AdapterError(f"canary adapter {version!r} is not loaded")
        self._canary = version

    def _load_adapter(self, path: Path, version: str) -> str:
        """Worker thread: load ``path`` under a fresh peft name; return ``version``."""
        known = self._adapters.get(version)
        if known is not None and known[1] == path:
            self._retired.discard(version)
            return version
        self._adapter_seq += 1
        name = f"a{self._adapter_seq}"
        try:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(self._model, str(path), adapter_name=name,
                                                       is_trainable=False)
                self._peft.eval()
            else:
                self._peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
        except Exception as exc:
            if self._peft is not None and name in getattr(self._peft, "peft_config", {}):
                try:
                    self._peft.delete_adapter(name)
                except Exception:
                    log.exception("could not remove half-loaded adapter %s", name)
            raise AdapterError(f"adapter {version} at {path} could not be loaded ({exc}); "
                               f"kept {self._active or 'the base model'}. Re-train it or roll "
                               "back with `nightowl rollback`.") from exc
        if known is not None:  # same label, new files: the old copy retires
            self._retired.add(f"{version}@{known[0]}")
            self._adapters[f"{version}@{known[0]}"] = known
        self._adapters[version] = (name, path)
        return version

    def _activate(self, version: str | None) -> None:
        old = self._active
        self._active = version
        self._merge_active()
        if old is not None and old != version and old != self._canary:
            self._retired.add(old)
        self._retired.discard(version or "")
        self._unload_unused()
        log.info("active adapter: %s -> %s", old or "base", version or "base")

    def _merge_active(self) -> None:
        """Worker thread: pack the active adapter's merged weights (see :mod:`llm.prepack`)."""
        packed, peft = self._packed, self._peft
        if packed is None or peft is None:
            return
        name = self._adapters[self._active][0] if self._active is not None else None
        if name == packed.merged_name:
            return
        if name is None:
            packed.clear()
            return
        started = time.perf_counter()
        if packed.merge(peft, name):
            log.info("merged adapter %s into the packed weights in %.2f s", self._active,
                     time.perf_counter() - started)
        else:
            log.info("adapter %s cannot be merged; it runs through peft", self._active)

    def _unload_unused(self) -> None:
        in_use = {r.name for r in self._rows}
        for version in list(self._retired):
            entry = self._adapters.get(version)
            if entry is None:
                self._retired.discard(version)
                continue
            name = entry[0]
            if name in in_use or version == self._active or version == self._canary:
                continue
            self._retired.discard(version)
            del self._adapters[version]
            if self._peft is not None and len(self._peft.peft_config) > 1:
                try:
                    with warnings.catch_warnings():  # "active adapter deleted": we know
                        warnings.simplefilter("ignore")
                        self._peft.delete_adapter(name)
                except Exception:
                    log.exception("could not unload adapter %s", version)

    # ---- worker ------------------------------------------------------------------------------
    def _run(self) -> None:
        torch = self._torch  # thread count: set by _load_model, on this same thread
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._waiting or self._rows or self._commands or self._stopping):
                        self._lock.wait()
                    if self._stopping:
                        break
                    commands, self._commands = self._commands, []
                for cmd in commands:
                    cmd()
                try:
                    self._admit()
                    self._flush()  # first tokens out before the next decode step
                    if self._rows:
                        self._step()
                except Exception as exc:  # a broken step fails the batch, not the service
                    log.exception("decode step failed")
                    for row in self._rows:
                        row.req.send("error", ModelError(f"generation failed: {exc}"))
                    self._rows, self._cache, self._mask = [], None, None
                self._flush()
        self._flush()
        err = ModelError("the model service was closed")
        with self._lock:
            pending = [*self._waiting, *(r.req for r in self._rows)]
            self._waiting.clear()
            commands, self._commands = self._commands, []
        for req in pending:
            req.deliver("error", err)
        for cmd in commands:
            cmd()

    def _flush(self) -> None:
        """Deliver the queued messages: one ``call_soon_threadsafe`` per event loop."""
        if not self._outbox:
            return
        items, self._outbox[:] = list(self._outbox), []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, str, Any]]] = {}
        for item in items:
            by_loop.setdefault(item[0].loop, []).append(item)
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, batch)
            except RuntimeError:  # the callers' loop is closed: nobody is listening any more
                for req, _, _ in batch:
                    req.cancelled = True

    def _next_request(self) -> _Request | None:
        with self._lock:
            while self._waiting:
                req = self._waiting.popleft()
                if not req.cancelled:
                    return req
        return None

    def _resolve(self, selector: str) -> str | None:
        if selector == BASE:
            return None
        if selector != ACTIVE:
            if selector not in self._adapters:
                raise AdapterError(f"adapter {selector!r} is no longer loaded")
            return selector
        share = self.cfg.canary_share
        if self._canary is not None and self._canary in self._adapters and share > 0:
            self._canary_credit += share
            if self._canary_credit >= 1.0 - 1e-9:
                self._canary_credit -= 1.0
                return self._canary
        return self._active

    def _admit(self) -> None:
        """Prefill every waiting request that fits, all together (packed, see _prefill), so
        prompts arriving together get their first tokens together (lower p95 TTFT)."""
        free = self.cfg.max_batch_size - len(self._rows)
        if free <= 0:
            return
        if not self._rows:  # idle: let requests sent in the same instant join this prefill
            time.sleep(0.002)
        rows: list[tuple[_Row, list[int]]] = []
        while len(rows) < min(free, _PREFILL_ROWS):
            req = self._next_request()
            if req is None:
                break
            try:
                prepared = self._prepare(req)
            except Exception as exc:
                log.exception("prefill failed")
                req.send("error", exc if isinstance(exc, ModelError)
                         else ModelError(f"generation failed: {exc}"))
                continue
            if prepared is not None:
                rows.append(prepared)
        if not rows:
            return
        try:
            self._prefill(rows)
        except Exception as exc:
            log.exception("prefill failed")
            for row, _ in rows:
                row.req.send("error", exc if isinstance(exc, ModelError)
                             else ModelError(f"generation failed: {exc}"))

    def _forward(self, input_ids: Any, names: list[str | None], **kw: Any) -> Any:
        if self._peft is None:
            return self._model(input_ids=input_ids, use_cache=True, **kw)
        first = names[0]
        same = all(n == first for n in names)
        merged = self._packed.merged_name if self._packed is not None else None
        if same and (first is None or first == merged):  # base weights, or the merged adapter
            self._lora(False, merged=first is not None)
            return self._peft(input_ids=input_ids, use_cache=True, **kw)
        self._lora(True)
        if same:
            if self._peft.active_adapter != first:
                self._peft.set_adapter(first)
            return self._peft(input_ids=input_ids, use_cache=True, **kw)
        return self._peft(input_ids=input_ids, use_cache=True,
                          adapter_names=[n or _BASE_NAME for n in names], **kw)

    def _lora(self, on: bool, merged: bool = False) -> None:
        """Switch peft's LoRA layers on/off (only when it changes: it visits every layer) and
        choose the packed weights (plain or with the active adapter merged in)."""
        if on != self._lora_on:
            if on:
                self._peft.base_model.enable_adapter_layers()
            else:
                self._peft.base_model.disable_adapter_layers()
            self._lora_on = on
        if self._packed is not None:
            self._packed.use_merged = merged

    def _prepare(self, req: _Request) -> tuple[_Row, list[int]] | None:
        """Tokenize and resolve one request; None when it is already done (no room to answer)."""
        torch = self._torch
        ids = self._render(self._tok, req.messages)
        limit = max(self.context_length - 1, 1)
        if len(ids) > limit:  # safety net: callers fit prompts with llm.prompt.fit_messages
            ids = ids[-limit:]
        p = req.params
        version = self._resolve(req.selector)
        name = self._adapters[version][0] if version is not None else None
        max_new = max(0, min(p.max_new_tokens, self.context_length - len(ids)))
        gen = None
        if p.seed is not None and p.temperature > 0:
            gen = torch.Generator().manual_seed(p.seed)
        row = _Row(req, version, name, IncrementalDecoder(self._tok), StopChecker(p.stop),
                   seen=None, max_new=max_new, generator=gen, pos=len(ids) - 1)
        # The repetition penalty covers generated tokens only: penalising the prompt's tokens
        # stops a small model from quoting retrieved sources (measured: grounded answers with
        # generation-only penalty, off-topic ones with the prompt included).
        row.seen_set = set()
        row.seen = torch.zeros(0, dtype=torch.long)
        req.send("start", (version, len(ids)))
        if max_new == 0:
            req.send("done", ("length", 0))
            return None
        return row, ids

    def _prefill(self, batch: list[tuple[_Row, list[int]]]) -> None:
        torch = self._torch
        # The prompts are packed into ONE row (no padding: with prompts of 50 and 500 tokens a
        # padded batch would compute 1,000 tokens for 550), one forward pass per adapter among
        # them; attention stays within each prompt (llm.attention's packed path). Each row's
        # K/V then goes into the decode layout: rows right-aligned (left-padded) in one buffer.
        rows = [row for row, _ in batch]
        lens = [len(ids) for _, ids in batch]
        width = max(lens)
        logits: Any = None
        cache: Any = None
        for part, out in self._packed_passes(batch):
            if logits is None:
                logits = out.logits.new_empty((len(rows), out.logits.shape[-1]))
                cache = out.past_key_values
                keys = [torch.zeros((len(rows), layer.keys.shape[1], width,
                                     layer.keys.shape[3]), dtype=layer.keys.dtype,
                                    device=self._device) for layer in cache.layers]
                values = [torch.zeros_like(k) for k in keys]
            logits[part] = out.logits[0]
            start = 0
            for i in part:
                end = start + lens[i]
                for k, v, layer in zip(keys, values, out.past_key_values.layers, strict=True):
                    k[i, :, width - lens[i]:] = layer.keys[0, :, start:end]
                    v[i, :, width - lens[i]:] = layer.values[0, :, start:end]
                start = end
        for layer, k, v in zip(cache.layers, keys, values, strict=True):
            layer.keys, layer.values = k, v
        shift = torch.tensor([width - n for n in lens], device=self._device)
        cols = torch.arange(width, device=self._device)
        mask = (cols[None, :] >= shift[:, None]).long()  # 1 = a real token
        self._emit_all(rows, logits)
        keep = [i for i, r in enumerate(rows) if not r.done]
        for row in rows:
            if row.done:
                row.req.send("done", (row.done, row.generated))
        if not keep:
            return
        if len(keep) < len(rows):
            idx = torch.tensor(keep, device=self._device)
            mask = mask.index_select(0, idx)
            for layer in cache.layers:
                layer.keys = layer.keys.index_select(0, idx)
                layer.values = layer.values.index_select(0, idx)
        lead = int((mask.sum(0) > 0).long().argmax().item())
        if lead:
            for layer in cache.layers:
                layer.keys = layer.keys[:, :, lead:]
                layer.values = layer.values[:, :, lead:]
            mask = mask[:, lead:]
        self._merge([rows[i] for i in keep], cache, mask)

    def _packed_passes(self, batch: list[tuple[_Row, list[int]]]
                       ) -> Iterator[tuple[list[int], Any]]:
        """The prefill's forward passes: (indices into ``batch``, output), one pass per adapter
        among the rows, or one per prompt once the model has shown it cannot pack."""
        groups: dict[str | None, list[int]] = {}
        for i, (row, _) in enumerate(batch):
            groups.setdefault(row.name, []).append(i)
        for name, members in groups.items():
            pending = [members] if self._packing else [[i] for i in members]
            while pending:
                part = pending.pop(0)
                out = self._forward_packed([batch[i][1] for i in part], name)
                if out is None:  # no packing for this model: these prompts one at a time
                    pending[:0] = [[i] for i in part]
                    continue
                yield part, out

    def _forward_packed(self, prompts: list[list[int]], name: str | None) -> Any:
        """One forward pass over ``prompts`` packed into a single row; the logits are those of
        each prompt's last token (``[1, len(prompts), vocab]``). None (and packing off from now
        on) when the model did not hand the segments to llm.attention's kernel: its attention
        would have crossed from one prompt into the next."""
        torch = self._torch
        from transformers import DynamicCache

        lens = [len(ids) for ids in prompts]
        ids = torch.tensor([[t for p in prompts for t in p]], dtype=torch.long,
                           device=self._device)
        positions = torch.cat([torch.arange(n, device=self._device) for n in lens])[None]
        bounds = torch.tensor([0, *lens], device=self._device).cumsum(0)
        seen: list[bool] = []  # the kernel appends to it when it attends per segment
        segments: dict[str, Any] = {} if len(prompts) == 1 else {
            "cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": max(lens),
            "max_length_k": max(lens), PACKED_MARK: seen}
        out = self._forward(ids, [name], past_key_values=DynamicCache(),
                            position_ids=positions, logits_to_keep=bounds[1:] - 1, **segments)
        if segments and not seen:
            log.warning("this model does not pass packed-prompt arguments to its attention; "
                        "prefilling one prompt at a time")
            self._packing = False
            return None
        return out

    def _merge(self, rows: list[_Row], cache: Any, mask: Any) -> None:
        torch = self._torch
        length = mask.shape[1]
        if self._cache is None:
            if self._grow is None:
                self._grow = _grow_layer_class()
            for layer in cache.layers:
                layer.__class__ = self._grow
            self._rows, self._cache, self._mask = list(rows), cache, mask
            return
        cur = self._mask.shape[1]
        width = max(cur, length)

        def pad(t: Any, n: int) -> Any:
            if n == 0:
                return t
            shape = list(t.shape)
            shape[-2 if t.dim() == 4 else -1] = n
            z = torch.zeros(shape, dtype=t.dtype, device=t.device)
            return torch.cat([z, t], dim=-2 if t.dim() == 4 else -1)

        for mine, new in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([pad(mine.keys, width - cur), pad(new.keys, width - length)])
            mine.values = torch.cat([pad(mine.values, width - cur),
                                     pad(new.values, width - length)])
        self._mask = torch.cat([pad(self._mask, width - cur), pad(mask, width - length)])
        self._rows.extend(rows)

    def _step(self) -> None:
        torch = self._torch
        self._drop([r for r in self._rows if r.req.cancelled])
        if not self._rows:
            return
        n = len(self._rows)
        input_ids = torch.tensor([[r.last] for r in self._rows], device=self._device)
        positions = torch.tensor([[r.pos] for r in self._rows], device=self._device)
        mask = torch.cat([self._mask, torch.ones((n, 1), dtype=torch.long,
                                                 device=self._device)], dim=1)
        out = self._forward(input_ids, [r.name for r in self._rows], attention_mask=mask,
                            position_ids=positions, past_key_values=self._cache,
                            logits_to_keep=1)
        self._mask = mask
        self._emit_all(self._rows, out.logits[:, -1])
        finished = [r for r in self._rows if r.done]
        self._drop(finished)
        for row in finished:  # after the drop, so stats() never shows a finished request
            row.req.send("done", (row.done, row.generated))

    def _emit_all(self, rows: list[_Row], logits: Any) -> None:
        """Sample one token per row (each with its own settings) and stream the text."""
        ps = [r.req.params for r in rows]
        toks = sample_batch(logits, [r.seen for r in rows],
                            temperature=[p.temperature for p in ps], top_p=[p.top_p for p in ps],
                            repetition_penalty=[p.repetition_penalty for p in ps],
                            generators=[r.generator for r in rows])
        now = time.monotonic()
        with self._lock:
            self._tokens_window.append((now, len(rows)))
            while now - self._tokens_window[0][0] > 10.0:
                self._tokens_window.popleft()
        for row, tok in zip(rows, toks, strict=True):
            self._emit(row, tok)

    def _emit(self, row: _Row, tok: int) -> None:
        """Stream the text of ``tok`` for ``row``; mark the row done when finished."""
        torch = self._torch
        row.generated += 1
        row.pos += 1
        row.last = tok
        if tok in self._eos and not row.req.params.ignore_eos:
            row.done = "stop"
            row.req.send("text", (self._tail(row), row.generated))
            return
        if tok not in row.seen_set:
            row.seen_set.add(tok)
            row.seen = torch.cat([row.seen, torch.tensor([tok], dtype=torch.long)])
        text, hit = row.stops.feed(row.decoder.push(tok))
        if hit:
            row.done = "stop"
        elif row.generated >= row.max_new:
            row.done = "length"
            text += self._tail(row)
        if text:
            row.req.send("text", (text, row.generated))

    @staticmethod
    def _tail(row: _Row) -> str:
        """Text still held back when a row ends (incomplete bytes, a possible stop prefix)."""
        out, hit = row.stops.feed(row.decoder.flush())
        return out if hit else out + row.stops.rest()

    def _drop(self, rows: list[_Row]) -> None:
        if not rows:
            return
        torch = self._torch
        gone = set(map(id, rows))
        keep = [i for i, r in enumerate(self._rows) if id(r) not in gone]
        self._served += len(rows)
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
        else:
            idx = torch.tensor(keep, device=self._device)
            self._mask = self._mask.index_select(0, idx)
            self._rows = [self._rows[i] for i in keep]
            lead = int((self._mask.sum(0) > 0).long().argmax().item())
            # keep the remaining rows; trim columns that are padding in every one of them
            for layer in self._cache.layers:
                layer.keys = layer.keys.index_select(0, idx)[:, :, lead:]
                layer.values = layer.values.index_select(0, idx)[:, :, lead:]
            self._mask = self._mask[:, lead:]
        if self._retired:
            self._unload_unused()


def _deliver_all(batch: list[tuple[_Request, str, Any]]) -> None:
    for req, kind, payload in batch:
        req.out.put_nowait((kind, payload))


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)

