"""The SQLite store: NightOwl's system of record. Imports nothing else of NightOwl."""

from data.errors import StoreError
from data.migrations import MIGRATIONS
from data.rows import Message, User
from data.store import Store

__all__ = ["MIGRATIONS", "Message", "Store", "StoreError", "User"]
