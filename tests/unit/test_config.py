"""Config loading: defaults documented in config.toml, validation messages name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import Config, load_config, parse_config
from bot.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_equals_dataclass_defaults() -> None:
    cfg = parse_config((ROOT / "config.toml").read_text(), source="config.toml")
    assert cfg == Config(), "config.toml must document exactly the dataclass defaults"


def test_every_setting_is_in_config_toml() -> None:
    import dataclasses
    import tomllib

    raw = tomllib.loads((ROOT / "config.toml").read_text())
    for section in dataclasses.fields(Config):
        if section.name == "source":
            continue
        keys = {f.name for f in dataclasses.fields(section.type if not isinstance(section.type, str)
                                                   else type(getattr(Config(), section.name)))}
        assert set(raw[section.name]) == keys, section.name


def test_relative_storage_dir_resolves_against_config_folder(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "c.toml"
    p.parent.mkdir()
    p.write_text('[storage]\ndir = "state"\n')
    assert load_config(p).storage.path == p.parent.resolve() / "state"


@pytest.mark.parametrize(("text", "needle"), [
    ("[model]\ntemperature = 5\n", "[model].temperature must be between 0.0 and 2.0"),
    ("[model]\ntemprature = 0.5\n", "unknown key 'temprature'"),
    ("[modle]\n", "unknown section [modle]"),
    ("[model]\nmax_new_tokens = 'many'\n", "must be an integer"),
    ("[model]\nbackend = 'gpt'\n", "must be one of 'local', 'openai', 'fake'"),
    ("[discord]\nadmin_menu_permission = 'root'\n", "'administrator', 'manage_guild'"),
    ("[telegram]\nadmins = [1, 'x']\n", "[telegram].admins[1] must be an integer"),
    ("[model]\nload_in_4bit = true\nload_in_8bit = true\n", "cannot both be true"),
    ("[model]\nbackend = 'openai'\n", "needs base_url"),
    ("[rag]\nchunk_tokens = 20\nchunk_overlap = 30\n", "must be smaller"),
    ("[model\n", "not valid TOML"),
    ("[training]\nmin_chars = 50\nmax_chars = 10\n", "must be smaller than max_chars"),
    ("[training]\nmax_seq_len = 4096\n", "cannot exceed [model] context_length"),
    ("[training]\nmax_steps = 3\nwarmup_steps = 5\n", "learning rate never rises"),
    ("[training]\nlearning_rate = 5.0\n", "[training].learning_rate must be between"),
    ("[chat]\nhistory_messages = true\n", "must be an integer"),
])
def test_bad_config_is_rejected_with_the_key(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="my.toml")
    assert needle in str(err.value)
    assert "my.toml" in str(err.value)


def test_missing_config_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config PATH"):
        load_config(tmp_path / "nope.toml")


def test_env_var_selects_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "x.toml"
    p.write_text("[chat]\nhistory_messages = 3\n")
    monkeypatch.setenv("NIGHTOWL_CONFIG", str(p))
    assert load_config().chat.history_messages == 3


def test_secret_comes_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config()
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    assert cfg.secret(cfg.telegram.token_env) is None
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", " 123:abc ")
    assert cfg.secret(cfg.telegram.token_env) == "123:abc"
