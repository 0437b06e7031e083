"""``[logging]`` and the process's logging: one line per event (plain or JSON), secrets redacted,
a rotating file under the storage dir. The command line sets it up once per process."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bot.core.config import setting

_STD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime"}


@dataclass(frozen=True)
class LoggingConfig:
    level: str = setting("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    json: bool = False


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS}


class RedactSecrets(logging.Filter):
    """Replace the values of configured secrets (tokens, API keys) with ``***``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self._clean(record.getMessage())
            record.args = None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
            elif record.exc_text:
                record.exc_text = self._clean(record.exc_text)
            if record.stack_info:
                record.stack_info = self._clean(record.stack_info)
            for key, value in _extras(record).items():  # ``extra=`` fields reach both formats
                if isinstance(value, str):
                    setattr(record, key, self._clean(value))
                elif not isinstance(value, int | float | bool) and value is not None:
                    setattr(record, key, self._clean(str(value)))
        return True

    def __call__(self, text: str) -> str:
        """Clean any text (the command line's error messages, which are printed, not logged)."""
        return self._clean(text)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = _extras(record)
        if extras:
            base += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return base


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
            "msg": record.getMessage()}
        doc.update(_extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup_logging(cfg: LoggingConfig, storage: Path, secrets: list[str],
                  quiet: bool = False) -> None:
    """Configure the root logger once: stderr (WARNING when ``quiet``) and a rotating file
    ``<storage>/logs/nightowl.log``; ``secrets`` (their values) never reach either."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    level = getattr(logging, cfg.level)
    root.setLevel(level)
    fmt: logging.Formatter = (JsonFormatter() if cfg.json else
                              PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    fmt.converter = time.localtime
    redact = RedactSecrets(secrets)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else level)
    console.setFormatter(fmt)
    console.addFilter(redact)
    root.addHandler(console)
    try:
        logdir = storage / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(logdir / "nightowl.log", maxBytes=10_000_000,
                                                  backupCount=3, encoding="utf-8")
        fh.setLevel(level)
        fh.setFormatter(fmt)
        fh.addFilter(redact)
        root.addHandler(fh)
    except OSError as exc:
        root.warning("cannot write logs under %s: %s", storage, exc)
    for noisy in ("httpx", "httpcore", "chromadb", "urllib3", "discord.gateway", "apscheduler",
                  "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
