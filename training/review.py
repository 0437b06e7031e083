"""Which ratings and corrections may train: the review rule, one pure function per item.

``[training] review``:

* ``"owners"`` (default): the asker's own 👍 and corrections by the asker or an admin train unless
  an admin rejected them; a *suggestion* (an allowed user's correction of someone else's answer)
  trains only after an admin approves it.
* ``"admin"``: nothing trains until an admin approves it (unrated answers included).

An approval may carry an edited text, which then replaces the correction. The store records who
made a correction (``corrections.origin``) and the reviews; this module only decides.
"""

from __future__ import annotations

from typing import Literal

from data.rows import TrainingMessage

REVIEW_MODES = ("owners", "admin")
State = Literal["approved", "pending", "rejected"]


def _state(review: str | None, trusted: bool, mode: str) -> State:
    if review == "rejected":
        return "rejected"
    if review == "approved":
        return "approved"
    return "approved" if trusted and mode == "owners" else "pending"


def correction_state(m: TrainingMessage, mode: str) -> State:
    """The latest correction of ``m``: suggestions always wait for an admin."""
    return _state(m.correction_review, m.correction_origin in ("owner", "admin", None), mode)


def rating_state(m: TrainingMessage, mode: str) -> State:
    """``m``'s rating (only its asker or an admin can rate) or, unrated, the answer itself."""
    return _state(m.feedback_review, True, mode)


def corrected_text(m: TrainingMessage) -> str:
    """The correction to train on: an admin's edit when the approval carried one."""
    if m.correction_review == "approved" and m.correction_edited:
        return m.correction_edited
    return m.correction or ""
