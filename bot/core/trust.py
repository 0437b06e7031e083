"""Who may rate or correct an answer, and correction notes (corrections that work at once).

The rule, the same on every platform and path (buttons, replies, split, re-sent and recovered
answers), because it is decided here from the store and never from platform reply metadata:

* only the answer's asker (the owner of its conversation) or an admin rates it (👍/👎); anyone
  else gets :data:`NOT_YOURS` and nothing is stored;
* the asker's correction is stored as ``owner``, an admin's as ``admin``; another allowed user's
  correction of someone else's answer is stored as a ``suggestion``, which trains and becomes a
  note only once an admin approves it (``/review``);
* with ``[training] review = "admin"`` an admin's own rating or correction is recorded with the
  admin's approval (the terminal's operator is an admin);
* a correction that ``training.review`` trusts (approved) becomes a retrievable note in the
  knowledge base (``[rag] correction_notes``); a rejection removes it; ``/forget`` removes the
  user's notes. A note that cannot be written is logged and said in the reply; the correction
  itself is always stored first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from bot.core.context import CommandContext
from bot.core.messages import CommandResult, Incoming
from data.rows import AnswerOwner, TrainingMessage
from rag.base import CorrectionNote, CorrectionNotes
from training.review import correction_state

log = logging.getLogger("nightowl.core")

NOT_YOURS = "Only the person who asked (or an admin) can rate this answer."
GONE = "That answer no longer exists."
SUGGESTED = ("Thanks — this is someone else's answer, so your correction is saved as a "
             "suggestion: an admin reviews it (/review) before it is used or learned.")
WAITS = ("Thanks — your correction is saved. An admin approves corrections here before they are "
         "used or learned (/review).")
LEARNED = "Thanks — I'll use this correction from now on and learn it in the next training run."
NOTE_FAILED = ("\n⚠️ It could not be added to the knowledge base just now (see the logs), so "
               "answers use it only after the next training run.")


@dataclass(frozen=True)
class Target:
    """The answer a command refers to, and whether the caller asked it."""

    owner: AnswerOwner
    mine: bool

    @property
    def answer_id(self) -> int:
        return self.owner.answer_id


def is_asker(owner: AnswerOwner, inc: Incoming) -> bool:
    return owner.platform == inc.platform and owner.platform_user_id == str(inc.user_id)


async def target_answer(ctx: CommandContext, inc: Incoming) -> Target | None:
    """The answer a command refers to: the one replied to (whoever asked it: ``mine`` says
    whether the caller did; callers decide), else the caller's own last answer in this chat."""
    store = ctx.store
    if inc.reply_to_message_id:
        msg = await store.find_by_platform_id(inc.platform, inc.chat_id, inc.reply_to_message_id)
        owner = await store.answer_owner(msg.id) if msg is not None else None
        if owner is not None:
            return Target(owner, is_asker(owner, inc))
    user = await store.ensure_user(inc.platform, inc.user_id, inc.display_name)
    last = await store.last_answer(await store.active_conversation(user.id, inc.platform,
                                                                   inc.chat_id))
    owner = await store.answer_owner(last.id) if last is not None else None
    return Target(owner, True) if owner is not None else None


# ---- ratings ------------------------------------------------------------------------------
async def feedback(ctx: CommandContext, inc: Incoming, answer_id: int,
                   value: int) -> CommandResult:
    """Record 👍 (1) or 👎 (-1) on an answer (its asker or an admin); pressing again changes it."""
    owner = await ctx.store.answer_owner(answer_id)
    if owner is None:
        return CommandResult(GONE, ok=False)
    if not (is_asker(owner, inc) or inc.is_admin):
        log.info("refused a rating of someone else's answer %s", answer_id)
        return CommandResult(NOT_YOURS, ok=False)
    user = await ctx.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
    await ctx.store.set_feedback(answer_id, user.id, value)
    if inc.is_admin and review_mode(ctx) == "admin":  # an admin's rating is its own approval
        await ctx.store.add_review(answer_id, None, "approved", reviewer(inc))
    return CommandResult("Thanks — recorded 👍." if value > 0 else
                         "Thanks — recorded 👎. Use /correct TEXT to give the right answer.")


async def _rate(ctx: CommandContext, inc: Incoming, value: int) -> CommandResult:
    target = await target_answer(ctx, inc)
    if target is None:
        return CommandResult("There is no answer to rate yet.", ok=False)
    return await feedback(ctx, inc, target.answer_id, value)


async def good(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    return await _rate(ctx, inc, 1)


async def bad(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    return await _rate(ctx, inc, -1)


# ---- corrections --------------------------------------------------------------------------
def reviewer(inc: Incoming) -> str:
    """How reviews and audit name a decider: ``platform:user id``."""
    return f"{inc.platform}:{inc.user_id}"


def review_mode(ctx: CommandContext) -> str:
    return ctx.cfg.training.review


def trusted(ctx: CommandContext, origin: str, decision: str | None) -> bool:
    """Whether a correction of ``origin`` with that admin decision may train (and be a note)."""
    m = TrainingMessage(id=0, role="assistant", text="", created_at=0.0, correction="-",
                        correction_origin=origin, correction_review=decision)
    return correction_state(m, review_mode(ctx)) == "approved"


async def correct(ctx: CommandContext, inc: Incoming, args: str) -> CommandResult:
    if not args:
        return CommandResult("Usage: /correct THE RIGHT ANSWER (reply to an answer, or it "
                             "applies to the last one).", ok=False)
    target = await target_answer(ctx, inc)
    if target is None:
        return CommandResult("There is no answer to correct yet.", ok=False)
    user = await ctx.store.ensure_user(inc.platform, inc.user_id, inc.display_name)
    origin = "owner" if target.mine else "admin" if inc.is_admin else "suggestion"
    cid = await ctx.store.add_correction(target.answer_id, user.id, args, origin=origin)
    if origin == "suggestion":
        return CommandResult(SUGGESTED)
    if not trusted(ctx, origin, None):
        if not inc.is_admin:
            return CommandResult(WAITS)
        # review = "admin": an admin's (or the operator's) correction is its own approval
        await ctx.store.add_review(target.answer_id, cid, "approved", reviewer(inc))
    problem = await add_note(ctx, target.owner, user.id, args,
                             by="admin" if inc.is_admin else "user")
    return CommandResult(LEARNED + problem)


# ---- correction notes ---------------------------------------------------------------------
def _notes(ctx: CommandContext) -> CorrectionNotes | None:
    kb = ctx.knowledge
    return kb if isinstance(kb, CorrectionNotes) else None


async def add_note(ctx: CommandContext, owner: AnswerOwner, corrector_id: int, text: str, *,
                   by: str, at: float | None = None) -> str:
    """Make a trusted correction retrievable; "" when done or notes are off, else a notice."""
    notes = _notes(ctx)
    if notes is None or not getattr(ctx.cfg.rag, "correction_notes", True):
        return ""
    try:
        await notes.add_note(CorrectionNote(
            answer_id=owner.answer_id, owner_id=owner.user_id, corrector_id=corrector_id,
            question=owner.question, text=text, by=by, at=at if at is not None else time.time()))
    except Exception:
        log.exception("could not store the correction note of answer %s", owner.answer_id)
        return NOTE_FAILED
    return ""


async def remove_note(ctx: CommandContext, answer_id: int) -> str:
    """Remove an answer's note (its correction was rejected); "" when done, else a notice."""
    notes = _notes(ctx)
    if notes is None:
        return ""
    try:
        await notes.remove_note(answer_id)
    except Exception:
        log.exception("could not remove the correction note of answer %s", answer_id)
        return ("\n⚠️ Its note could not be removed from the knowledge base just now (see the "
                "logs); reject it again later or reindex.")
    return ""


async def forget_notes(ctx: CommandContext, user_id: int) -> str:
    """/forget: remove the notes the user asked or corrected; "" when done, else a notice."""
    notes = _notes(ctx)
    if notes is None:
        return ""
    try:
        await notes.forget_notes(user_id)
    except Exception:
        log.exception("could not remove the correction notes of a forgotten user")
        return ("\n⚠️ Your corrections could not be removed from the knowledge base's notes "
                "just now; the error is logged so an admin can remove them.")
    return ""
