"""The store's one error type. Every message says how to fix the problem."""

from __future__ import annotations


class StoreError(Exception):
    """The store cannot be opened, migrated, or is inconsistent."""
