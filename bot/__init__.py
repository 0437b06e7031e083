"""NightOwl's application: the only package that imports all the others (data ← llm ← rag ←
training ← bot).

``app`` (the composition root) · ``config`` (the composed config and its one loader) · ``cli/``
(the ``nightowl`` command line) · ``core/`` (the platform-neutral conversation and commands) ·
``telegram/``, ``discord/``, ``terminal/`` (the platforms: each imports only ``core``) · ``logs``
· ``errors``. Inside bot, ``core`` imports no other part of the bot.
"""
