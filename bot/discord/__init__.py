"""The Discord platform (discord.py 2): ``client`` (NightOwlClient, the services injected into the
``commands.Bot`` subclass; DiscordBot, its ``async with`` lifecycle), ``messages`` (which messages
are for the bot, and answering them), ``commands`` (the core's command table as slash commands
and the ``/admin`` group), ``buttons`` (persistent 👍/👎 and /forget confirmation buttons that
own their checks), ``render`` (answers streamed as throttled edits), ``port`` (what commands and
buttons need from the client), ``attachments``, ``config`` (``[discord]``).

Imports only ``bot.core`` of the bot. With absolute imports, ``import discord`` in these modules
means the library, not this folder (never run a file here as a script).
"""
