"""Secrets never reach a log line or the command line's error output (review L11, M10)."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import pytest

from bot.config import Config
from bot.core import ConfigError
from bot.logs import JsonFormatter, LoggingConfig, PlainFormatter, RedactSecrets, setup_logging

SECRET = "123456:AAE-secret-token-value"
cli_main = importlib.import_module("bot.cli.main")  # the package re-exports main()


def _record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("nightowl.test", logging.INFO, __file__, 1, msg, None, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


@pytest.mark.parametrize("fmt", [PlainFormatter("%(message)s"), JsonFormatter()])
def test_extra_fields_and_stack_info_are_redacted(fmt: logging.Formatter) -> None:
    rec = _record(f"calling {SECRET}", url=f"https://api/bot{SECRET}/getMe",
                  params={"token": SECRET}, count=3)
    rec.stack_info = f"Stack (most recent call last):\n  token={SECRET}"
    assert RedactSecrets([SECRET]).filter(rec)
    line = fmt.format(rec)
    assert SECRET not in line, line
    assert "***" in line and "3" in line
    if isinstance(fmt, JsonFormatter):
        assert json.loads(line)["count"] == 3  # numbers stay numbers


def test_an_exception_text_is_redacted() -> None:
    try:
        raise RuntimeError(f"rejected {SECRET}")
    except RuntimeError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None,
                                __import__("sys").exc_info())
    RedactSecrets([SECRET]).filter(rec)
    assert SECRET not in PlainFormatter("%(message)s").format(rec)


def test_setup_logging_writes_no_secret_to_the_file(tmp_path: Path) -> None:
    setup_logging(LoggingConfig(), tmp_path, [SECRET], quiet=True)
    try:
        logging.getLogger("nightowl.test").warning("token %s", SECRET,
                                                   extra={"detail": f"t={SECRET}"})
    finally:
        for h in logging.getLogger().handlers:
            h.flush()
    text = (tmp_path / "logs" / "nightowl.log").read_text()
    assert "token ***" in text and SECRET not in text, text


def test_a_cli_error_quoting_the_token_prints_it_redacted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """PTB's InvalidToken quotes the token; the CLI prints such errors to stderr (M10)."""
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(f'[storage]\ndir = "{tmp_path / "var"}"\n')
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", SECRET)

    async def failing(args: object, cfg: Config) -> int:
        raise ConfigError(f"Telegram rejected the bot token (The token `{SECRET}` was "
                          "rejected by the server.)")

    parser = cli_main.build_parser()
    real_parse = parser.parse_args

    def parse(argv: list[str] | None = None) -> object:
        ns = real_parse(argv)
        ns.run = failing
        return ns

    monkeypatch.setattr(parser, "parse_args", parse)
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    code = cli_main.main(["--config", str(cfg_file), "status"])
    err = capsys.readouterr().err
    assert code == cli_main.EXIT_ERROR
    assert "rejected" in err and SECRET not in err, err
