"""The base model's own greedy answers to general questions, generated once per base model.

Two shipped question sets use them: ``training/regression/`` (the gate scores the candidate on
them and compares its greedy answers with the reference's) and ``training/replay/`` (mixed into
every training run so that what was not taught stays as it was). The two sets share no question,
so the gate never grades what replay trained. Answers are cached in a JSON file under the storage
dir with a key of (model path, system prompt, questions, token limit): a different base model,
prompt or question list regenerates them; the cache is replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from data.files import write_atomic

HERE = Path(__file__).resolve().parent
REGRESSION_DIR = HERE / "regression"
REPLAY_DIR = HERE / "replay"


def load_questions(directory: Path) -> list[str]:
    """The ``question`` of every line of every ``*.jsonl`` file in ``directory`` (sorted)."""
    questions: list[str] = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                questions.append(str(json.loads(line)["question"]))
    return questions


def load_replay(limit: int, directory: Path = REPLAY_DIR) -> list[str]:
    """The first ``limit`` replay questions (0 = replay off)."""
    return load_questions(directory)[:limit] if limit > 0 else []


def answers_key(model_path: str, system_prompt: str, questions: Sequence[str],
                max_new_tokens: int) -> str:
    blob = json.dumps([model_path, system_prompt, list(questions), max_new_tokens])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def cached_answers(cache: Path, key: str, generate: Callable[[], list[str]]) -> list[str]:
    """The answers stored under ``key`` in ``cache``, else ``generate()`` (then stored)."""
    cache = Path(cache)
    if cache.exists():
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = {}
        if isinstance(data, dict) and data.get("key") == key:
            return [str(a) for a in data["answers"]]
    answers = generate()
    write_atomic(cache, json.dumps({"key": key, "answers": answers}, ensure_ascii=False,
                                   indent=1))
    return answers
