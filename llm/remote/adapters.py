"""RemoteAdapters: the LoRA adapters one OpenAI-compatible server (vLLM) holds for this process.

Invariants:

* On vLLM (``/v1/models`` entries ``owned_by: vllm``) a NightOwl version ``v0007`` is served
  under the versioned name ``nightowl-v0007``, apart from the served model names; other servers
  (NightOwl's own ``serve-openai`` wants the registry's folder name) get the version as it is.
  A name is never re-pointed to other weights: a loaded version with another folder is refused,
  and a name the server already holds from another folder is refused too.
* Requests pin the version they start on (:meth:`acquire`/:meth:`release`); a version is unloaded
  (``POST /v1/unload_lora_adapter``) only when no request of this process uses it and it is
  neither the active one nor the canary: retired versions at once, extra ones (``load_adapter``)
  once more than ``max_loaded`` are loaded, oldest first.
* Before loading, the adapter's tensor shapes are checked against the served model's
  ``config.json`` (found through ``/v1/models`` ``root`` when the server's model folder is
  readable here, as it is for the adapter folder): vLLM loads an adapter of another base model
  without complaint and then answers exactly like the base model.
* A server restart loses runtime adapters. After a connection failure, a dead engine or a 404 for
  one of our names the set is *stale*: :meth:`restore` lists ``/v1/models`` and loads again
  whatever is missing, once, before the next request goes out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llm.adapters import validate_adapter_dir
from llm.errors import AdapterError
from llm.remote import replies

log = logging.getLogger("nightowl.llm")

PREFIX = "nightowl-"
MAX_LOADED = 4  # runtime adapters kept on the server (active + canary + extras)
_LAYER = re.compile(r"layers\.(\d+)\.")


def served_name(version: str) -> str:
    """The server-side name of a NightOwl version: ``v0007`` -> ``nightowl-v0007``."""
    return version if version.startswith(PREFIX) else PREFIX + version


@dataclass(frozen=True)
class RemoteAdapter:
    version: str
    name: str
    path: Path


@dataclass(frozen=True)
class ServedModel:
    """One entry of ``GET /v1/models`` (vLLM: adapters have ``parent`` = the base's id)."""

    id: str
    root: str
    parent: str | None
    owned_by: str


def base_mismatch(adapter_dir: Path, base_config: dict[str, Any]) -> str | None:
    """Why the adapter's LoRA tensors cannot belong to the model of ``base_config``, or None."""
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return None  # .bin adapters: shapes are not readable without loading them
    from safetensors import safe_open

    hidden = int(base_config.get("hidden_size") or 0)
    heads = int(base_config.get("num_attention_heads") or 0)
    kv = int(base_config.get("num_key_value_heads") or heads)
    head_dim = int(base_config.get("head_dim") or (hidden // heads if heads else 0))
    widths = {hidden, int(base_config.get("intermediate_size") or 0), head_dim * heads,
              head_dim * kv, int(base_config.get("vocab_size") or 0)} - {0}
    layers = int(base_config.get("num_hidden_layers") or 0)
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            shape = list(f.get_slice(key).get_shape())
            if "lora_A" in key and len(shape) == 2 and shape[1] not in widths:
                return f"tensor {key} reads width {shape[1]}, the model has {sorted(widths)}"
            if "lora_B" in key and len(shape) == 2 and shape[0] not in widths:
                return f"tensor {key} writes width {shape[0]}, the model has {sorted(widths)}"
            m = _LAYER.search(key)
            if m and layers and int(m.group(1)) >= layers:
                return f"tensor {key} is for layer {m.group(1)}, the model has {layers} layers"
    return None


class RemoteAdapters:
    """Loaded runtime adapters of one server, with pins, pruning and restore (see module doc)."""

    def __init__(self, base_url: str, model: str, http: httpx.AsyncClient,
                 max_loaded: int = MAX_LOADED) -> None:
        self.base_url = base_url
        self.model = model
        self.max_loaded = max_loaded
        self._http = http
        self._loaded: dict[str, RemoteAdapter] = {}  # load order
        self._using: Counter[str] = Counter()
        self._retired: set[str] = set()
        self._stale = False
        self._lock = asyncio.Lock()
        self._base_checked: dict[str, Any] | None = None
        self.versioned = False  # vLLM (``owned_by: vllm``): names are ``nightowl-vNNNN``
        self.reloads = 0  # adapters loaded again after the server lost them

    # ---- read-only -------------------------------------------------------------------------
    def has(self, version: str) -> bool:
        return version in self._loaded

    def versions(self) -> list[str]:
        return list(self._loaded)

    def name(self, version: str) -> str:
        return self._loaded[version].name

    def version_of(self, name: str) -> str | None:
        return next((a.version for a in self._loaded.values() if a.name == name), None)

    @property
    def stale(self) -> bool:
        return self._stale

    # ---- pins ------------------------------------------------------------------------------
    def acquire(self, version: str | None) -> None:
        if version is not None:
            self._using[version] += 1

    def release(self, version: str | None) -> None:
        if version is not None:
            self._using[version] -= 1
            if self._using[version] <= 0:
                del self._using[version]

    def mark_stale(self) -> None:
        """The server may have lost its runtime adapters (restart, dead engine)."""
        if self._loaded:
            self._stale = True

    # ---- server calls ----------------------------------------------------------------------
    async def models(self) -> list[ServedModel]:
        resp = await self._http.get(f"{self.base_url}/models")
        resp.raise_for_status()
        return [ServedModel(str(m.get("id")), str(m.get("root") or ""), m.get("parent"),
                            str(m.get("owned_by") or "")) for m in resp.json().get("data", [])]

    async def ensure(self, path: Path, version: str, kept: str) -> None:
        """Load ``path`` as ``version`` unless it is loaded already (AdapterError: not loaded)."""
        checked = validate_adapter_dir(Path(path))
        known = self._loaded.get(version)
        if known is not None:
            if known.path != checked:
                raise AdapterError(f"adapter label {version} is already loaded from other "
                                   f"weights; a label is never re-pointed ({kept} stays "
                                   "active). Give the new weights a new version.")
            self._retired.discard(version)
            return
        async with self._lock:
            await self._check_base(checked, version, kept)
            name = served_name(version) if self.versioned else version
            adapter = RemoteAdapter(version, name, checked)
            await self._post_load(adapter, kept)
            self._loaded[version] = adapter
            self._retired.discard(version)

    async def _probe(self) -> None:
        """Once: is it vLLM (versioned names) and can the served model's config be read?"""
        if self._base_checked is not None:
            return
        try:
            served = {m.id: m for m in await self.models()}
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot list %s/models (%s): adapters keep their plain version names "
                        "and their base model is not checked", self.base_url, exc)
            return
        self._base_checked = {}
        base = served.get(self.model)
        self.versioned = any(m.owned_by == "vllm" for m in served.values())
        conf = Path(base.root) / "config.json" if base is not None and base.root else None
        if conf is not None and conf.is_file():
            self._base_checked = json.loads(conf.read_text(encoding="utf-8"))
        elif self.versioned:
            log.warning("the served model's folder is not readable here; adapters' base "
                        "model cannot be checked before loading them into %s", self.base_url)

    async def _check_base(self, path: Path, version: str, kept: str) -> None:
        await self._probe()
        if not self._base_checked:
            return
        problem = base_mismatch(path, self._base_checked)
        if problem:
            raise AdapterError(f"adapter {version} was trained for another base model than "
                               f"{self.model!r} served at {self.base_url} ({problem}). vLLM "
                               "would load it silently and answer like the base model. Train "
                               "it on the served model, or serve its base model. Kept "
                               f"{kept}.")

    async def _post_load(self, adapter: RemoteAdapter, kept: str) -> None:
        url = f"{self.base_url}/load_lora_adapter"
        try:
            resp = await self._http.post(url, json={"lora_name": adapter.name,
                                                    "lora_path": str(adapter.path)})
        except httpx.HTTPError as exc:
            raise AdapterError(f"{replies.down(self.base_url, str(exc) or type(exc).__name__)} "
                               f"Kept {kept}.") from exc
        if resp.status_code == 400 and replies.ALREADY_LOADED in resp.text:
            await self._adopt(adapter, kept)  # loaded by another process (or before a restart)
            return
        if resp.status_code >= 400:
            raise replies.lora_refused(self.base_url, adapter.version, resp.status_code,
                                       resp.text, kept)

    async def _adopt(self, adapter: RemoteAdapter, kept: str) -> None:
        """The server already has the name: use it only if it points at the same folder."""
        try:
            served = {m.id: m for m in await self.models()}
        except (httpx.HTTPError, ValueError) as exc:
            raise AdapterError(f"cannot list {self.base_url}/models ({exc}); kept {kept}.") \
                from exc
        root = served[adapter.name].root if adapter.name in served else ""
        if root and Path(root).resolve() != adapter.path:
            raise AdapterError(f"the server at {self.base_url} already serves {adapter.name} "
                               f"from {root}, not {adapter.path} (two storage dirs share one "
                               "server?). Give each NightOwl its own server, or unload it. "
                               f"Kept {kept}.")

    async def _post_unload(self, adapter: RemoteAdapter) -> None:
        try:
            resp = await self._http.post(f"{self.base_url}/unload_lora_adapter",
                                         json={"lora_name": adapter.name})
        except httpx.HTTPError as exc:
            log.warning("could not unload %s from %s: %s", adapter.name, self.base_url, exc)
            return
        if resp.status_code >= 400 and replies.NOT_FOUND_ON_UNLOAD not in resp.text:
            log.warning("could not unload %s from %s (%s: %s)", adapter.name, self.base_url,
                        resp.status_code, resp.text[:200])

    # ---- lifecycle -------------------------------------------------------------------------
    def retire(self, version: str | None) -> None:
        if version is not None and version in self._loaded:
            self._retired.add(version)

    async def prune(self, active: str | None, canary: str | None) -> list[str]:
        """Unload what no request uses (retired first, then the oldest extras over the cap)."""
        async with self._lock:
            keep = {active, canary}
            free = [v for v in self._loaded if v not in keep and v not in self._using]
            drop = [v for v in free if v in self._retired]
            over = len(self._loaded) - len(drop) - self.max_loaded
            drop += [v for v in free if v not in drop][:max(0, over)]
            for version in drop:
                adapter = self._loaded.pop(version)
                self._retired.discard(version)
                await self._post_unload(adapter)
                log.info("unloaded adapter %s (%s) from %s", version, adapter.name,
                         self.base_url)
            return drop

    async def restore(self) -> list[str]:
        """Load again every adapter the server lost (after a restart). Returns the versions
        loaded again; one that cannot be loaded is dropped (logged)."""
        if not self._stale:
            return []
        async with self._lock:
            if not self._stale:
                return []
            served = {m.id for m in await self.models()}  # HTTPError: still down, stays stale
            again: list[str] = []
            for version, adapter in list(self._loaded.items()):
                if adapter.name in served:
                    continue
                try:
                    await self._post_load(adapter, "the others")
                except AdapterError as exc:
                    log.error("adapter %s lost by %s cannot be loaded again: %s", version,
                              self.base_url, exc)
                    del self._loaded[version]
                    continue
                again.append(version)
            self._stale = False
            self.reloads += len(again)
            if again:
                log.warning("%s had lost adapters %s (restarted?): loaded again", self.base_url,
                            ", ".join(again))
            return again
