"""Shared fixtures: a config rooted in a temp dir, a real SQLite store, the real embedded model."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import Config
from data.config import StorageConfig
from data.store import Store

ROOT = Path(__file__).resolve().parent.parent
# Converted embedded model shared by all tests (and test runs): converting takes ~20 s.
TEST_CACHE = ROOT / "var" / "test-cache"

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The bf16 safetensors folder of the embedded SmolLM2 (converted once per machine)."""
    from llm.embedded import ensure_embedded_model

    return ensure_embedded_model(TEST_CACHE)


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    """Default config with storage in a fresh temp dir and the fake model backend."""
    return Config().replace(storage=StorageConfig(dir=str(tmp_path / "var")),
                            model__backend="fake")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "nightowl.db") as s:
        yield s
