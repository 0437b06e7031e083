"""The application's errors, and the set of every package's errors a user can act on.

Each package owns its errors next to its code (``data.errors``, ``llm.errors``, ``rag.errors``,
``training.errors``); none of them imports the bot. They live in ``bot.core`` because the
platform folders, which import only ``bot.core``, raise them too (a rejected token is a
:class:`ConfigError`). :data:`USER_ERRORS` is what the command line and the chat commands catch
to show the message instead of a traceback: every message says how to fix the problem.
"""

from __future__ import annotations

from training.errors import LOOP_ERRORS


class NightOwlError(Exception):
    """A problem of the application itself that the user or operator can act on."""


class ConfigError(NightOwlError):
    """The config file is missing, malformed, or has an invalid value."""


USER_ERRORS: tuple[type[Exception], ...] = (NightOwlError, *LOOP_ERRORS)
