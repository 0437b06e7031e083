"""Chroma plumbing: the client (embedded or server), our embedding function, the chunk collection.

chromadb is imported only inside these functions (its import costs seconds). One
:class:`ChunkCollection` owns the handle of a collection (the chunks, or the correction notes):
ingestion writes through it, search reads through it, and reindex swaps the collection behind it,
so both always use the current one. Its ``embedding_model`` metadata names the model of the
vectors it holds; an empty collection always takes the configured model.

Reindex never deletes the only copy. A logical collection ``NAME`` is stored in a physical one:
``NAME`` itself until the first reindex, then ``NAME-v<12 hex>``; the pointer collection
``NAME.current`` names it in its metadata. A reindex fills a new physical collection, switches the
pointer (one atomic metadata write), and only then deletes the old one; a crash at any step
leaves the old or the new collection complete and pointed to, and leftovers of an interrupted
reindex are deleted by the next one. Another process's :class:`ChunkCollection` (a running bot
beside the console's reindex) follows the pointer: :meth:`ChunkCollection.follow` before every
search, and again when its collection is gone.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rag.base import Embedder
from rag.errors import KnowledgeError

log = logging.getLogger(__name__)

PAGE = 2000
POINTER_SUFFIX = ".current"
LEGACY_TMP_SUFFIX = "-reindex"  # where reindex built before the pointer (may be the only copy)


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


def open_existing(client: Any, name: str, embedder: Embedder, dtype: str) -> Any:
    """An existing collection (never created: raises ``NotFoundError`` when absent)."""
    return client.get_collection(name, embedding_function=embedding_function_class()(
        embedder, dtype=dtype))


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
        self._embedder = embedder
        self.physical = self._resolve()
        self.collection: Any = open_collection(client, self.physical, embedder, dtype)
        meta = self.collection.metadata or {}
        self.indexed_with = str(meta.get("embedding_model", embedder.name))
        if self.physical == name and self.collection.count() == 0 and self._adopt_legacy():
            return
        if self.indexed_with != embedder.name and self.collection.count() == 0:
            # No vectors of another model to re-embed: start afresh for this one. Changing the
            # metadata alone is not enough: an emptied collection keeps the dimension of the
            # vectors it once held (the new model's vectors would be refused) and the old
            # embedding function's config. Without this, the next start reads the old model
            # from the metadata and falls back to keyword-only search.
            client.delete_collection(self.physical)
            self.collection = open_collection(client, self.physical, embedder, dtype)
            self.indexed_with = embedder.name

    # ---- the pointer -------------------------------------------------------------------------
    @property
    def _pointer_name(self) -> str:
        return f"{self.name}{POINTER_SUFFIX}"

    def _resolve(self) -> str:
        """The physical collection the pointer names (``name`` before the first reindex)."""
        from chromadb.errors import NotFoundError

        try:
            meta = self.client.get_collection(self._pointer_name,
                                              embedding_function=None).metadata or {}
        except NotFoundError:
            return self.name
        return str(meta.get("current") or self.name)

    def _point(self, physical: str) -> None:
        pointer = self.client.get_or_create_collection(self._pointer_name,
                                                       embedding_function=None)
        pointer.modify(metadata={"current": physical})

    def _adopt_legacy(self) -> bool:
        """An older reindex that crashed between deleting ``name`` and renaming its new
        collection left the data only in ``name-reindex``: point to it instead of an empty one."""
        from chromadb.errors import NotFoundError

        try:
            legacy = open_existing(self.client, f"{self.name}{LEGACY_TMP_SUFFIX}",
                                   self._embedder, self.dtype)
        except NotFoundError:
            return False
        if legacy.count() == 0:
            return False
        log.warning("collection %r was empty but %r holds %d records (an interrupted reindex): "
                    "using those", self.name, legacy.name, legacy.count())
        self._point(legacy.name)
        self._switch(legacy)
        return True

    def _switch(self, collection: Any) -> None:
        self.collection, self.physical = collection, str(collection.name)
        meta = collection.metadata or {}
        self.indexed_with = str(meta.get("embedding_model", self._embedder.name))

    def follow(self) -> bool:
        """Switch to the collection the pointer names if another writer (another process, or
        another instance in this one) swapped it; True when it changed."""
        from chromadb.errors import NotFoundError

        current = self._resolve()
        if current == self.physical:
            return False
        try:
            self._switch(open_existing(self.client, current, self._embedder, self.dtype))
        except NotFoundError:
            return False  # pointed to but gone: a newer reindex is switching; keep ours
        log.info("knowledge collection %r now stored in %r (reindexed elsewhere)", self.name,
                 current)
        return True

    def _physicals(self) -> list[str]:
        """Every physical collection of this logical one (current, old, leftovers)."""
        mine = re.compile(rf"{re.escape(self.name)}-v[0-9a-f]{{12}}")
        names = [str(getattr(c, "name", c)) for c in self.client.list_collections()]
        return [n for n in names if n in (self.name, f"{self.name}{LEGACY_TMP_SUFFIX}")
                or mine.fullmatch(n)]

    def count(self) -> int:
        return int(self._followed(lambda: self.collection.count()))

    def _followed(self, read: Callable[[], Any]) -> Any:
        """``read``; once more after following the pointer if our collection was deleted."""
        from chromadb.errors import NotFoundError

        try:
            return read()
        except NotFoundError:
            if not self.follow():
                raise
            return read()

    def read_all(self, *, embeddings: bool = False) -> Records:
        """Every record, page by page (a collection can be larger than one ``get``)."""
        return self._followed(lambda: self._read_all(embeddings))

    def _read_all(self, embeddings: bool) -> Records:
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
        """``fill`` a fresh collection, then point to it in place of this one.

        The old collection is deleted only once the pointer names the complete new one; a
        failed ``fill`` leaves the old one current (its partial copy is deleted now or by the
        next rebuild). ``indexed_with`` is the caller's to update (on the event loop, together
        with what it invalidates).
        """
        from chromadb.errors import NotFoundError

        current = self._resolve()
        for leftover in self._physicals():  # interrupted rebuilds; never the current one
            if leftover != current:
                with contextlib.suppress(NotFoundError):
                    self.client.delete_collection(leftover)
        new_name = f"{self.name}-v{uuid.uuid4().hex[:12]}"
        new = open_collection(self.client, new_name, embedder, self.dtype)
        try:
            fill(new)
        except Exception:
            with contextlib.suppress(Exception):
                self.client.delete_collection(new_name)
            raise
        self._point(new_name)  # the switch: readers follow from here on
        old, self.collection, self.physical = current, new, new_name
        try:
            self.client.delete_collection(old)
        except Exception as exc:  # a leftover for the next rebuild, not an error
            log.info("old collection %r not deleted yet (%s)", old, exc)
