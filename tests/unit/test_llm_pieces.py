"""Model-free parts of llm/: incremental UTF-8 decoding, stop strings, sampling, config, factory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import Config, parse_config
from bot.core.errors import ConfigError
from llm.adapters import validate_adapter_dir
from llm.errors import AdapterError
from llm.factory import open_model
from llm.local.detokenizer import IncrementalDecoder, StopChecker
from llm.local.sampling import sample_batch, sample_next


class ByteTokenizer:
    """One token per UTF-8 byte: multi-byte characters span several tokens."""

    def decode(self, ids: list[int], **_: object) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_decoder_waits_for_whole_characters() -> None:
    dec = IncrementalDecoder(ByteTokenizer())
    text = "olá 🦉 coruja"
    deltas = [dec.push(b) for b in text.encode()]
    assert "".join(deltas) + dec.flush() == text
    assert all("\ufffd" not in d for d in deltas)
    assert deltas[text.encode().index("🦉".encode()) + 3] == "🦉"  # released on its 4th byte


def test_stop_checker_holds_back_partial_stop() -> None:
    chk = StopChecker(["\nUser:"])
    out, hit = chk.feed("Hello\nUs")
    assert (out, hit) == ("Hello", False)  # "\nUs" may begin the stop string
    out, hit = chk.feed("er: more")
    assert (out, hit) == ("", True)
    chk = StopChecker(["END"])
    assert chk.feed("a\nUs")[0] == "a\nUs"
    assert chk.feed("E")[0] == "" and chk.rest() == "E"


def test_sampling_greedy_penalty_and_seed() -> None:
    import torch

    logits = torch.tensor([[1.0, 3.0, 2.9, -1.0], [0.5, 0.1, 0.2, 4.0]])
    seen = [torch.tensor([1]), torch.tensor([], dtype=torch.long)]
    toks = sample_batch(logits, seen, temperature=[0.0, 0.0], top_p=[1.0, 1.0],
                        repetition_penalty=[1.5, 1.5], generators=[None, None])
    assert toks == [2, 3]  # token 1 penalised below token 2
    gens = [torch.Generator().manual_seed(5) for _ in range(2)]
    a = sample_batch(logits, seen, temperature=[1.0, 1.0], top_p=[0.9, 0.9],
                     repetition_penalty=[1.0, 1.0], generators=gens)
    gens = [torch.Generator().manual_seed(5) for _ in range(2)]
    b = sample_batch(logits, seen, temperature=[1.0, 1.0], top_p=[0.9, 0.9],
                     repetition_penalty=[1.0, 1.0], generators=gens)
    assert a == b  # seeded sampling is reproducible
    one = sample_next(logits[1], seen[1], temperature=1.0, top_p=0.01, repetition_penalty=1.0,
                      generator=None)
    assert one == 3  # top_p this small keeps only the most likely token


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("temperature", "5", "between 0.0 and 2.0"), ("top_p", "0", "between 0.01 and 1.0"),
    ("repetition_penalty", "0.5", "between 1.0 and 2.0"), ("max_new_tokens", "0", "between 1"),
    ("backend", '"llamacpp"', "one of 'local', 'openai', 'fake'"),
    ("canary_share", "1.5", "between 0.0 and 1.0")])
def test_model_config_ranges_rejected(key: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigError, match="model") as exc:
        parse_config(f"[model]\n{key} = {value}\n", source="config.toml")
    assert allowed in str(exc.value) and key in str(exc.value)


def test_adapter_validation(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="does not exist"):
        validate_adapter_dir(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    with pytest.raises(AdapterError, match=r"no adapter_config\.json"):
        validate_adapter_dir(tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(AdapterError, match="no adapter weights"):
        validate_adapter_dir(tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterError, match="corrupt"):
        validate_adapter_dir(tmp_path / "a")


async def test_factory_fake_backend(cfg: Config) -> None:
    model = await open_model(cfg.model, cfg.storage.path)
    assert type(model).__name__ == "FakeChatModel"
    assert model.context_length == cfg.model.context_length
    text = "".join([d async for d in model.stream([{"role": "user", "content": "hi"}])])
    assert text == "You said: hi."
    await model.aclose()


async def test_factory_openai_backend(cfg: Config) -> None:
    other = cfg.replace(model__backend="openai", model__base_url="http://127.0.0.1:9/v1")
    model = await open_model(other.model, other.storage.path)
    assert type(model).__name__ == "OpenAIChatModel"
    await model.aclose()


def test_import_llm_stays_cheap() -> None:
    code = ("import sys, llm, llm.factory, llm.base, llm.prompt, llm.adapters, llm.canary, "
            "llm.local, llm.local.sampling, llm.local.detokenizer; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_batched_nucleus_sampling_follows_the_renormalised_distribution() -> None:
    import torch

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])  # top_p 0.9 keeps the first three tokens
    logits = probs.log()[None].repeat(2, 1)
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    counts = torch.zeros(4)
    for _ in range(2000):
        for tok in sample_batch(logits, [torch.zeros(0, dtype=torch.long)] * 2,
                                temperature=[1.0, 1.0], top_p=[0.9, 0.9],
                                repetition_penalty=[1.0, 1.0], generators=gens):
            counts[tok] += 1
    freq = counts / counts.sum()
    assert counts[3] == 0  # outside the nucleus: never drawn
    want = torch.tensor([0.5, 0.3, 0.15]) / 0.95
    assert torch.allclose(freq[:3], want, atol=0.03)
