"""The knowledge base's errors. Every message says how to fix the problem."""

from __future__ import annotations


class KnowledgeError(Exception):
    """Ingestion or retrieval failed."""
