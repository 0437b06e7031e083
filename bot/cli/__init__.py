"""The ``nightowl`` command line: argument parsing and one module per command group.

``main`` (the parser, the table of groups, ``main()``) · ``chat`` (chat, ask) · ``ops`` (run,
status, backup, restore, serve-openai) · ``kb`` (ingest, kb list|remove|reindex) · ``training``
(train, adapters, rollback, export, export-model) · ``common`` (output helpers). Each group
registers its subcommands with the function that runs them; the config is loaded once.
"""

from __future__ import annotations

from bot.cli.main import main

__all__ = ["main"]
