"""``[rag]``: the embedding model, the Chroma store, chunking and retrieval settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from data.config import StorageConfig
from llm.config import setting


@dataclass(frozen=True)
class RagConfig:
    enabled: bool = True
    embedding_model: str = "embedded"
    chroma_url: str = ""
    collection: str = "knowledge"
    chunk_tokens: int = setting(200, 16, 4096)
    chunk_overlap: int = setting(30, 0, 1024)
    top_k: int = setting(3, 1, 50)
    min_score: float = setting(0.3, -1.0, 1.0)
    context_tokens: int = setting(600, 0, 100_000)
    max_file_mb: float = setting(20.0, 0.001, 10_000.0)
    max_pdf_pages: int = setting(2000, 1, 1_000_000)
    extract_timeout_s: float = setting(120.0, 1.0, 86_400.0)
    sample_on_first_run: bool = True
    hybrid: bool = True
    embedding_dtype: str = setting("auto", choices=("auto", "float32", "bfloat16", "float16"))
    min_keyword_score: float = setting(0.5, 0.0, 1.0)
    keyword_weight: float = setting(3.0, 0.0, 100.0)
    exact_search_max: int = setting(200_000, 0, 100_000_000)
    correction_notes: bool = True
    note_min_score: float = setting(0.7, -1.0, 1.0)


class KnowledgeSettings(Protocol):
    """The sections the knowledge base reads (the bot's ``Config`` provides them)."""

    @property
    def storage(self) -> StorageConfig: ...

    @property
    def rag(self) -> RagConfig: ...
