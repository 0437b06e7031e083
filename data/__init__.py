"""The SQLite store: NightOwl's system of record. Imports nothing else of NightOwl."""

from data.migrations import MIGRATIONS
from data.store import Message, Store, StoreError, User

__all__ = ["MIGRATIONS", "Message", "Store", "StoreError", "User"]
