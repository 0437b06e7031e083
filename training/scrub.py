"""PII and secret scrubbing for training data: nothing identifying is written to a dataset.

Patterns (in this order, so a token is never half-matched as a phone number): API keys and tokens
(Telegram bot tokens, Discord bot tokens, ``sk-`` keys, GitHub/Slack/AWS/Google keys, JWTs,
``Bearer`` headers, ``password=``/``api_key:`` assignments), e-mail addresses, card numbers that
pass the Luhn check, IPv4/IPv6 addresses and phone numbers. Each match becomes a typed
placeholder such as ``[email]`` so the sentence keeps its shape.

No maintained PII library is installed in this environment (presidio and scrubadub pull spaCy models
from the network), so these are our own patterns; the tests pin each one.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field

_TOKEN_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    # Telegram bot token: numeric bot id, colon, 35 url-safe characters.
    ("token", re.compile(r"(?<![\w])\d{5,16}:[A-Za-z0-9_-]{35}(?![\w-])")),
    # Discord bot token: base64 user id . timestamp . hmac (and legacy mfa. tokens).
    ("token", re.compile(r"(?<![\w.])[MNO][A-Za-z\d_-]{23,27}\.[A-Za-z\d_-]{6,7}"
                         r"\.[A-Za-z\d_-]{27,40}(?![\w-])")),
    ("token", re.compile(r"\bmfa\.[A-Za-z\d_-]{20,}")),
    # OpenAI / Anthropic style secret keys.
    ("key", re.compile(r"\bsk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_-]{16,}")),
    # GitHub, Slack, AWS, Google, Hugging Face, Stripe-like.
    ("key", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})")),
    ("key", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
    ("key", re.compile(r"\bhf_[A-Za-z0-9]{30,}")),
    ("key", re.compile(r"\b(?:rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}")),
    # JSON web tokens.
    ("token", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
]
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/-]{16,}=*")
_ASSIGNMENT = re.compile(
    r"(?i)\b((?:api[_-]?key|apikey|access[_-]?token|auth[_-]?token|secret(?:[_-]?key)?|token|"
    r"password|passwd|pwd|client[_-]?secret)\s*[:=]\s*)(['\"]?)([^\s'\"]{6,})\2")
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                    r"\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                   r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.]*\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,5}"
                    r"(?:[\s.-]?\d{2,5}){1,4}(?![\w])")
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


@dataclass
class ScrubResult:
    text: str
    counts: Counter[str] = field(default_factory=Counter)


def _sub(pattern: re.Pattern[str], kind: str, text: str, counts: Counter[str]) -> str:
    def repl(m: re.Match[str]) -> str:
        counts[kind] += 1
        return f"[{kind}]"
    return pattern.sub(repl, text)


def scrub(text: str) -> ScrubResult:
    """Replace secrets and personal data in ``text`` with placeholders; count what was found."""
    counts: Counter[str] = Counter()
    for kind, pattern in _TOKEN_PATTERNS:
        text = _sub(pattern, kind, text, counts)

    def bearer(m: re.Match[str]) -> str:
        counts["token"] += 1
        return f"{m.group(1)} [token]"
    text = _BEARER.sub(bearer, text)

    def assignment(m: re.Match[str]) -> str:
        if m.group(3).startswith("[") and m.group(3).endswith("]"):
            return m.group(0)  # already a placeholder
        counts["secret"] += 1
        return f"{m.group(1)}{m.group(2)}[secret]{m.group(2)}"
    text = _ASSIGNMENT.sub(assignment, text)
    text = _sub(_EMAIL, "email", text, counts)

    def card(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            counts["card"] += 1
            return "[card]"
        return m.group(0)
    text = _CARD.sub(card, text)
    text = _sub(_IPV4, "ip", text, counts)

    def ipv6(m: re.Match[str]) -> str:
        try:
            ipaddress.IPv6Address(m.group(0))
        except ValueError:
            return m.group(0)
        counts["ip"] += 1
        return "[ip]"
    text = _IPV6.sub(ipv6, text)

    def phone(m: re.Match[str]) -> str:
        raw = m.group(0)
        digits = re.sub(r"\D", "", raw)
        plus = raw.startswith("+")
        separated = bool(re.search(r"[\s().-]", raw))
        if _DATE.match(raw.strip()) or not (8 if plus else 9) <= len(digits) <= 15:
            return raw
        if not plus and not separated and len(digits) < 10:
            return raw  # a bare 9-digit number is more likely an id or amount
        counts["phone"] += 1
        return "[phone]"
    text = _PHONE.sub(phone, text)
    return ScrubResult(text, counts)
