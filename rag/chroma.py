"""Chroma plumbing: the client (embedded or server), our embedding function, the chunk collection.

chromadb is imported only inside these functions (its import costs seconds). One
:class:`ChunkCollection` owns the handle of a collection (the chunks, or the correction notes):
ingestion writes through it, search reads through it, and reindex swaps the collection behind it,
so both always use the current one. Its ``embedding_model`` metadata names the model of the
vectors it holds; an empty collection always takes the configured model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rag.base import Embedder
from rag.errors import KnowledgeError

PAGE = 2000


@functools.cache
def embedding_function_class() -> type:
    """Chroma ``EmbeddingFunction`` subclass wrapping an :class:`Embedder` (built once)."""
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings

    class NightOwlEmbeddingFunction(EmbeddingFunction[Documents]):
        """Our embedder, so Chroma never downloads its default ONNX model."""

        def __init__(self, embedder: Embedder | None = None, model: str = "",
                     dtype: str = "auto") -> None:
            self._embedder = embedder
            self._model = embedder.name if embedder is not None else model
            self._dtype = dtype

        def _get(self) -> Embedder:
            if self._embedder is None:  # rebuilt by Chroma from its stored config
                from rag.embedder import make_embedder

                self._embedder = make_embedder(self._model, self._dtype)
            return self._embedder

        def __call__(self, input: Documents) -> Embeddings:
            import numpy as np

            return [np.asarray(v, dtype=np.float32) for v in self._get().embed(list(input))]

        @staticmethod
        def name() -> str:
            return "nightowl"

        def get_config(self) -> dict[str, Any]:
            return {"model": self._model, "dtype": self._dtype}

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> NightOwlEmbeddingFunction:
            return NightOwlEmbeddingFunction(model=str(config.get("model", "")),
                                             dtype=str(config.get("dtype", "auto")))

        def default_space(self) -> Any:
            return "cosine"

    return NightOwlEmbeddingFunction


def make_client(chroma_url: str, path: Path) -> Any:
    """``PersistentClient`` under ``path`` or ``HttpClient`` for ``chroma_url``; no telemetry."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if not chroma_url:
        path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(path), settings=settings)
    url = urlparse(chroma_url if "://" in chroma_url else f"http://{chroma_url}")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise KnowledgeError(f"[rag] chroma_url {chroma_url!r} is not a URL like "
                             "'http://127.0.0.1:8000'")
    port = url.port or (443 if url.scheme == "https" else 8000)
    try:
        client = chromadb.HttpClient(host=url.hostname, port=port, ssl=url.scheme == "https",
                                     settings=settings)
        client.heartbeat()
    except Exception as exc:
        raise KnowledgeError(
            f"cannot reach the Chroma server at {chroma_url} ({type(exc).__name__}: {exc}). "
            "Start it with `chroma run --path DIR --host 127.0.0.1 --port PORT`, or set "
            "[rag] chroma_url = \"\" for the embedded store.") from exc
    return client


def open_collection(client: Any, name: str, embedder: Embedder, dtype: str) -> Any:
    ef = embedding_function_class()(embedder, dtype=dtype)
    return client.get_or_create_collection(
        name, embedding_function=ef, metadata={"embedding_model": embedder.name},
        # Above [rag] exact_search_max chunks, retrieval relies on this index: denser than
        # Chroma's defaults, which missed clear best matches among many similar chunks.
        configuration={"hnsw": {"space": "cosine", "ef_construction": 200, "ef_search": 200,
                                "max_neighbors": 32}})


@dataclass(frozen=True)
class Records:
    """Every chunk of a collection, in storage order."""

    ids: list[str]
    documents: list[str]
    metadatas: list[dict[str, Any]]
    vectors: Any = None  # numpy (n, dim) float32 when embeddings were read and there are any


class ChunkCollection:
    """A collection of embedded records and which embedding model its vectors come from."""

    def __init__(self, client: Any, name: str, embedder: Embedder, dtype: str) -> None:
        self.client = client
        self.name = name
        self.dtype = dtype
        self.collection: Any = open_collection(client, name, embedder, dtype)
        meta = self.collection.metadata or {}
        self.indexed_with = str(meta.get("embedding_model", embedder.name))
        if self.indexed_with != embedder.name and self.collection.count() == 0:
            # No vectors of another model to re-embed: start afresh for this one. Changing the
            # metadata alone is not enough: an emptied collection keeps the dimension of the
            # vectors it once held (the new model's vectors would be refused) and the old
            # embedding function's config. Without this, the next start reads the old model
            # from the metadata and falls back to keyword-only search.
            client.delete_collection(name)
            self.collection = open_collection(client, name, embedder, dtype)
            self.indexed_with = embedder.name

    def count(self) -> int:
        return int(self.collection.count())

    def read_all(self, *, embeddings: bool = False) -> Records:
        """Every record, page by page (a collection can be larger than one ``get``)."""
        include = ["documents", "metadatas"] + (["embeddings"] if embeddings else [])
        ids: list[str] = []
        docs: list[str] = []
        metas: list[dict[str, Any]] = []
        pages: list[Any] = []
        offset = 0
        while True:
            page = self.collection.get(include=include, limit=PAGE, offset=offset)
            if not page["ids"]:
                break
            ids += page["ids"]
            docs += page["documents"]
            metas += page["metadatas"]
            if embeddings:
                import numpy as np

                pages.append(np.asarray(page["embeddings"], dtype=np.float32))
            offset += len(page["ids"])
        vectors = None
        if pages:
            import numpy as np

            vectors = np.concatenate(pages)
        return Records(ids, docs, metas, vectors)

    def rebuild(self, embedder: Embedder, fill: Callable[[Any], None]) -> None:
        """``fill`` a fresh collection, then put it in place of this one under the same name.

        The old collection is deleted only once the new one is complete; ``indexed_with`` is the
        caller's to update (on the event loop, together with what it invalidates).
        """
        tmp = f"{self.name}-reindex"
        try:
            self.client.delete_collection(tmp)
        except Exception:
            pass  # no leftover from an interrupted reindex
        new = open_collection(self.client, tmp, embedder, self.dtype)
        fill(new)
        self.client.delete_collection(self.name)
        new.modify(name=self.name)
        self.collection = open_collection(self.client, self.name, embedder, self.dtype)
