"""The canary from the console: which candidate answers what share of the chats, kept across
restarts.

The rule is the model's (:mod:`llm.canary`): the last version loaded with ``load_adapter`` answers
``share`` of the requests for the active adapter. Setting it here loads the chosen version (it
must be a valid version in the registry, not the active one), sets the share, and stores both in
the store's kv table (``model.canary``). At start (:func:`restore`) the stored share replaces the
``[model] canary_share`` default and the stored version is loaded again (unless the share is 0);
a version that is gone or became the active one is skipped with a log line, never a failed
start. Nothing is written when a share is refused (a share is a number from 0 to 1).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

from bot.console.services import ConsoleCore, ConsoleSettings
from data.store import Store
from llm.base import CanaryState
from llm.canary import check_share
from llm.errors import ModelError
from training.registry import Registry

log = logging.getLogger("nightowl.console")
KV_KEY = "model.canary"


@dataclass(frozen=True)
class SavedCanary:
    """What the console chose last (the kv row ``model.canary``)."""

    version: str | None
    share: float


def parse_share(raw: str) -> float:
    """The form's share: a number from 0 to 1 (``0.25`` or ``25%``), else ModelError."""
    text = raw.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise ModelError(f"the canary share must be a number from 0 to 1 (0 = off, 0.25 = every "
                         f"4th request), not {raw.strip()[:20]!r}")
    return check_share(value)


async def saved(store: Store) -> SavedCanary | None:
    raw = await store.kv_get(KV_KEY)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        version = data.get("version")
        return SavedCanary(str(version) if version else None, check_share(data["share"]))
    except (ValueError, TypeError, KeyError, AttributeError, ModelError):
        log.warning("ignoring the stored canary %r (not what the console writes)", raw[:200])
        return None


def percent(share: float) -> str:
    return f"{round(share * 100, 1):g}%"


def describe(state: CanaryState, active: str | None) -> str:
    if state.version is None or state.version == active:
        if state.share <= 0:
            return "none (off)"
        return (f"none loaded; share {percent(state.share)} applies once a candidate is "
                "loaded")
    if state.share <= 0:
        return f"{state.version} is loaded as the canary but answers no chats (share 0)"
    return (f"{state.version} answers {percent(state.share)} of the chats for the active adapter "
            f"({active or 'base'})")


async def set_canary(core: ConsoleCore, cfg: ConsoleSettings, version: str,
                     share: float) -> CanaryState:
    """Load ``version`` as the canary (unless it already is; "" keeps the current one), set
    ``share`` and store both. Raises ModelError/AdapterError (nothing stored then)."""
    model = core.model
    if version and version != model.canary.version:
        if version == model.active_adapter:
            raise ModelError(f"{version} is the active adapter; a canary is another version "
                             "(a candidate) tried on a share of the chats")
        path = Registry(cfg.storage.path).validate(version)
        await model.load_adapter(path, version)
    await model.set_canary_share(share)
    state = model.canary
    await core.store.kv_set(KV_KEY, json.dumps({"version": state.version, "share": state.share}))
    return state


async def restore(core: ConsoleCore, cfg: ConsoleSettings) -> None:
    """At start: the stored share over ``[model] canary_share``, the stored version loaded."""
    found = await saved(core.store)
    if found is None:
        return
    model = core.model
    if (found.version and found.version != model.active_adapter and found.share > 0
            and model.canary.version != found.version):  # restored once, by run or console
        try:
            await model.load_adapter(Registry(cfg.storage.path).validate(found.version),
                                     found.version)
        except ModelError as exc:
            log.warning("the stored canary %s is not loaded again: %s", found.version, exc)
    await model.set_canary_share(found.share)
    log.info("canary from the console: %s", describe(model.canary, model.active_adapter))
