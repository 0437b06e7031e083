"""The Telegram platform (python-telegram-bot 22): ``adapter`` (TelegramBot: lifecycle, menus),
``handlers`` (which updates are for the bot, and what it does with them), ``updates`` (our own
polling: updates confirmed only once stored, none waiting on another), ``sender`` (pacing,
fallbacks, blocked chats), ``stream`` (one answer streamed into a chat), ``keyboards`` (inline
buttons and their callback data), ``format`` (Telegram's text rules), ``config``
(``[telegram]``).

Imports only ``bot.core`` of the bot. With absolute imports, ``import telegram`` in these
modules means the library, not this folder (never run a file here as a script).
"""
