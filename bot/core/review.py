"""``/review``: what waits for an admin's decision, and the decisions (approve / reject / edit).

Items and their short ids: ``c<id>`` a correction, ``a<id>`` an answer's rating, ``candidate``
the adapter waiting for promotion (``[training] promote = "admin"``). The list holds the
suggestions (someone else's correction of an answer), and with ``[training] review = "admin"``
also every undecided correction and rating; at most :data:`LIST_LIMIT` are shown, each with
approve/reject buttons. A decision is final and recorded with its reviewer; ``Core.command``
audits it (admin command). An approved correction becomes a correction note; a rejected one
removes its note, and the answer's earlier correction, if trusted, becomes the note again.
"""

from __future__ import annotations

import re

from bot.core.context import CommandContext
from bot.core.messages import Button, CommandResult, Incoming
from bot.core.trust import add_note, remove_note, review_mode, reviewer, trusted
from data.rows import ReviewItem

LIST_LIMIT = 5
USAGE = ("Usage: /review (lists what waits) · /review approve ID · /review reject ID · "
         "/review edit ID NEW TEXT (approves with your text). IDs look like c12 (a correction), "
         "a7 (a rating) or candidate.")
_KEY = re.compile(r"^([ca])(\d{1,18})$")
NO_LEARNING = CommandResult("Training is not enabled in this process.", ok=False)


def _short(text: str, n: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def describe(item: ReviewItem) -> str:
    """One listed item: id, what it is, the question, the answer and the proposed text."""
    if item.correction_id is None:
        what = f"{item.key} · {'👍' if (item.value or 0) > 0 else '👎'} by {item.author}"
    else:
        kind = {"suggestion": "suggestion", "admin": "admin correction"}.get(item.origin,
                                                                             "correction")
        what = f"{item.key} · {kind} by {item.author}"
    lines = [f"{what} on {item.owner}'s answer", f"  Q: {_short(item.question)}",
             f"  A: {_short(item.answer)}"]
    if item.correction_id is not None:
        lines.append(f"  → {_short(item.text, 300)}")
    return "\n".join(lines)


def _buttons(key: str) -> tuple[Button, ...]:
    return (Button(f"✅ {key}", "review", f"approve {key}"),
            Button(f"❌ {key}", "review", f"reject {key}"))


async def review(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    verb, _, rest = args.strip().partition(" ")
    verb = verb.lower() or "list"
    if verb == "list":
        return await _list(ctx)
    key, _, text = rest.strip().partition(" ")
    key, text = key.lower(), text.strip()
    if verb not in ("approve", "reject", "edit") or not key:
        return CommandResult(USAGE, ok=False)
    by = reviewer(inc)
    if key == "candidate":
        return await _candidate(ctx, verb, by)
    if verb == "edit" and not text:
        return CommandResult("Usage: /review edit ID NEW TEXT", ok=False)
    found = _KEY.match(key)
    if found is None:
        return CommandResult(f"Unknown item {key!r}. {USAGE}", ok=False)
    kind, number = found.group(1), int(found.group(2))
    item = await (ctx.store.correction_item(number) if kind == "c"
                  else ctx.store.rating_item(number))
    if item is None:
        return CommandResult(f"{key} no longer exists (the answer, the correction or the rating "
                             "was deleted, or the id is wrong).", ok=False)
    if item.decision is not None:
        return CommandResult(f"{key} was already {item.decision} by {item.reviewer}; a decision "
                             "is final.", ok=False)
    if item.correction_id is not None and not item.latest:
        return CommandResult(f"{key} was replaced by a later correction of the same answer; "
                             "review that one (/review).", ok=False)
    if item.correction_id is None and verb == "edit":
        return await _edit_rating(ctx, inc, item, text, by)
    decision = "rejected" if verb == "reject" else "approved"
    outcome = await ctx.store.add_review(item.answer_id, item.correction_id, decision, by,
                                         text if verb == "edit" else None)
    if outcome == "missing":
        return CommandResult(f"{key} no longer exists.", ok=False)
    if outcome == "already_decided":
        return CommandResult(f"{key} was already decided; a decision is final.", ok=False)
    if item.correction_id is None:
        return CommandResult(f"{decision.capitalize()} {key}: this rating "
                             f"{'may train' if decision == 'approved' else 'will not train'}.")
    if decision == "approved":
        problem = await _note(ctx, item, text or item.text,
                              by="user" if item.origin == "owner" and not text else "admin")
        return CommandResult(f"Approved {key}: it is used from now on and learned in the next "
                             f"training run.{problem}")
    return CommandResult(f"Rejected {key}: it will not be used or learned."
                         f"{await _after_reject(ctx, item)}")


async def _list(ctx: CommandContext) -> CommandResult:
    everything = review_mode(ctx) == "admin"
    items = await ctx.store.pending_reviews(everything=everything)
    lines: list[str] = []
    rows: list[tuple[Button, ...]] = []
    waiting = ctx.learning.waiting_candidate() if ctx.learning is not None else None
    if waiting:
        lines.append(f"candidate · {waiting}")
        rows.append(_buttons("candidate"))
    for item in items[:LIST_LIMIT]:
        lines.append(describe(item))
        rows.append(_buttons(item.key))
    if not lines:
        what = "corrections, ratings or candidates" if everything else "suggestions or candidates"
        return CommandResult(f"Nothing waits for review: no {what}.")
    if len(items) > LIST_LIMIT:
        lines.append(f"… and {len(items) - LIST_LIMIT} more: decide these, then /review again.")
    lines.append("Decide with the buttons, or /review approve ID · reject ID · edit ID NEW TEXT.")
    return CommandResult("\n".join(lines), buttons=rows)


async def _candidate(ctx: CommandContext, verb: str, by: str) -> CommandResult:
    learning = ctx.learning
    if learning is None:
        return NO_LEARNING
    if verb == "edit":
        return CommandResult("A candidate adapter can be approved or rejected, not edited.",
                             ok=False)
    if verb == "approve":
        return CommandResult(await learning.approve_candidate(by))
    return CommandResult(await learning.reject_candidate(by))


async def _edit_rating(ctx: CommandContext, inc: Incoming, item: ReviewItem, text: str,
                       by: str) -> CommandResult:
    """``/review edit a7 TEXT``: the admin's text becomes the answer's (approved) correction."""
    admin = await ctx.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
    cid = await ctx.store.add_correction(item.answer_id, admin.id, text, origin="admin")
    await ctx.store.add_review(item.answer_id, cid, "approved", by)
    problem = await _note(ctx, item, text, by="admin", corrector_id=admin.id)
    return CommandResult(f"Approved a{item.answer_id} with your text (correction c{cid}): it is "
                         f"used from now on and learned in the next training run.{problem}")


async def _note(ctx: CommandContext, item: ReviewItem, text: str, *, by: str,
                corrector_id: int | None = None) -> str:
    owner = await ctx.store.answer_owner(item.answer_id)
    if owner is None:
        return ""
    return await add_note(ctx, owner, corrector_id if corrector_id is not None else item.author_id,
                          text, by=by, at=item.created_at if corrector_id is None else None)


async def _after_reject(ctx: CommandContext, item: ReviewItem) -> str:
    """The answer's note follows its live correction: the earlier one if trusted, else none."""
    earlier = await ctx.store.live_correction(item.answer_id)
    if earlier is not None and trusted(ctx, earlier.origin, earlier.decision):
        return await _note(ctx, earlier, earlier.edited or earlier.text,
                           by="user" if earlier.origin == "owner" and not earlier.edited
                           else "admin")
    return await remove_note(ctx, item.answer_id)
