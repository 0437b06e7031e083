"""The terminal platform: ``nightowl chat`` (interactive or piped) and ``nightowl ask``
(``chat``: TerminalChat, TerminalRenderer). Imports only ``bot.core`` of the bot."""
