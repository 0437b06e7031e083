"""The LoRA adapters of the local model (peft), and the forward pass that picks the weights.

Invariants:
* Every method except the read-only ones (``active``, ``canary``, ``versions``, ``has``) runs on
  the worker thread, between two steps.
* A request is *pinned* to the adapter chosen when it was admitted (``resolve``); a version that
  is deactivated *retires* and is unloaded only once no running row uses it and it is neither
  active nor the canary. So a hot swap never drops or switches a running answer.
* A label names one folder while it is loaded: loading another folder under a loaded label is
  refused (AdapterError), never a re-point, so whoever selects an adapter by label (the bot
  through ``serve-openai``, a canary) keeps getting the weights it chose.
* A failed load leaves everything as it was (the half-loaded peft adapter is removed) and says
  which adapter is kept.
* On the CPU the active adapter is merged into the packed weights (:mod:`llm.local.prepack`): a
  forward pass whose rows all use it (or all use the base model) runs with peft's LoRA layers
  off; a pass with another adapter goes through peft, mixed rows with peft's ``adapter_names``.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm.base import ACTIVE, BASE
from llm.canary import Canary
from llm.errors import AdapterError
from llm.local.loading import Loaded

log = logging.getLogger("nightowl.llm")

_BASE_NAME = "__base__"  # peft's adapter_names value for "no adapter"


@dataclass(frozen=True)
class Adapter:
    name: str  # peft adapter name (a fresh one per load)
    path: Path


class AdapterSet:
    """The loaded adapters, which one is active, the canary; ``in_use`` = peft names of rows."""

    def __init__(self, loaded: Loaded, canary_share: float,
                 in_use: Callable[[], set[str | None]]) -> None:
        self._loaded = loaded
        self._in_use = in_use
        self.canary_rule = Canary(canary_share)
        self._adapters: dict[str, Adapter] = {}  # version -> adapter
        self._active: str | None = None
        self._retired: set[str] = set()  # versions to unload when no row uses them
        self._seq = 0
        self._peft: Any = None
        self._lora_on = True  # peft's LoRA layers enabled (off while running merged weights)

    # ---- read-only (any thread) --------------------------------------------------------------
    @property
    def active(self) -> str | None:
        return self._active

    @property
    def canary(self) -> str | None:
        return self.canary_rule.version

    def versions(self) -> list[str]:
        """The loaded versions, in load order."""
        return list(self._adapters)

    def has(self, version: str) -> bool:
        return version in self._adapters

    # ---- worker thread -----------------------------------------------------------------------
    def resolve(self, selector: str) -> tuple[str | None, str | None]:
        """(version label, peft name) that answers a request for ``selector``."""
        if selector == BASE:
            return None, None
        if selector != ACTIVE:
            if selector not in self._adapters:
                raise AdapterError(f"adapter {selector!r} is no longer loaded")
            version: str | None = selector
        else:
            version = self.canary_rule.pick(self._active)
        return version, self._adapters[version].name if version is not None else None

    def load(self, path: Path, version: str) -> str:
        """Load ``path`` under a fresh peft name; return ``version``. A loaded ``version``
        with the same folder is kept as it is; with another folder it is refused."""
        known = self._adapters.get(version)
        if known is not None and known.path == path:
            self._retired.discard(version)
            return version
        if known is not None:
            kept = self._active or "the base model"
            raise AdapterError(f"adapter label {version} is already loaded from other weights; "
                               f"a label is never re-pointed ({kept} stays active). Give the "
                               "new weights a new version.")
        self._seq += 1
        name = f"a{self._seq}"
        try:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(self._loaded.model, str(path),
                                                       adapter_name=name, is_trainable=False)
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
        self._adapters[version] = Adapter(name, path)
        return version

    def load_extra(self, path: Path, version: str) -> None:
        """Load without activating; the new version becomes the canary (see llm.canary)."""
        self.load(path, version)
        self.canary_rule.loaded(version, self._active)

    def activate(self, version: str | None) -> None:
        old = self._active
        self._active = version
        self._merge_active()
        if old is not None and old != version and old != self.canary:
            self._retired.add(old)
        self._retired.discard(version or "")
        self.unload_unused()
        log.info("active adapter: %s -> %s", old or "base", version or "base")

    def unload_unused(self) -> None:
        """Unload the retired versions no running row uses (never the active or the canary)."""
        if not self._retired:
            return
        in_use = self._in_use()
        for version in list(self._retired):
            entry = self._adapters.get(version)
            if entry is None:
                self._retired.discard(version)
                continue
            if entry.name in in_use or version == self._active or version == self.canary:
                continue
            self._retired.discard(version)
            del self._adapters[version]
            if self._peft is not None and len(self._peft.peft_config) > 1:
                try:
                    with warnings.catch_warnings():  # "active adapter deleted": we know
                        warnings.simplefilter("ignore")
                        self._peft.delete_adapter(entry.name)
                except Exception:
                    log.exception("could not unload adapter %s", version)

    def forward(self, input_ids: Any, names: list[str | None], **kw: Any) -> Any:
        """One forward pass; ``names[i]`` is the peft adapter of row i (None = base)."""
        if self._peft is None:
            return self._loaded.model(input_ids=input_ids, use_cache=True, **kw)
        packed = self._loaded.packed
        first = names[0]
        same = all(n == first for n in names)
        merged = packed.merged_name if packed is not None else None
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
        if self._loaded.packed is not None:
            self._loaded.packed.use_merged = merged

    def _merge_active(self) -> None:
        """Pack the active adapter's merged weights (see :mod:`llm.local.prepack`)."""
        packed, peft = self._loaded.packed, self._peft
        if packed is None or peft is None:
            return
        name = self._adapters[self._active].name if self._active is not None else None
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
