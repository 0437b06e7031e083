"""PII and secret scrubbing for training data: nothing identifying is written to a dataset.

``scrub(text)`` replaces each finding with a typed placeholder (``[email]``, ``[phone]``,
``[cpf]``, ``[secret]`` ...) so the sentence keeps its shape, and counts the findings by kind.
The formats and their check digits are in :mod:`training.pii`. Order matters and is fixed:
private-key blocks, credentials and tokens in URLs, provider keys, ``Authorization`` headers,
``name = value`` and "my password is ..." secrets, e-mail addresses, IBAN, CNPJ, CPF, RG, cards,
CEP, IP addresses, phones. UUIDs are set aside first and put back unchanged, so no part of one is
ever taken for a phone or a card.

Where it is applied is the dataset's business (:mod:`training.dataset`): questions and history
are scrubbed; the retrieved context is never rewritten; an example whose *answer* holds a finding
is dropped and counted, so the model never learns to print a placeholder.

No maintained PII library is installed in this environment (presidio and scrubadub pull spaCy models
from the network), so these are our own patterns; tests/unit/test_training_scrub.py pins each one.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field

from training import pii
from training.pii import luhn_ok

__all__ = ["ScrubResult", "luhn_ok", "scrub"]

_STRONG_VALUE = re.compile(r"(?=.*\d)(?=.*[A-Za-z])|.{16,}")
_PLACEHOLDER = re.compile(r"^\[[a-z]+\]$")


@dataclass
class ScrubResult:
    text: str
    counts: Counter[str] = field(default_factory=Counter)


class _Scrubber:
    def __init__(self, text: str) -> None:
        self.text = text
        self.counts: Counter[str] = Counter()
        self._kept: list[str] = []

    def found(self, kind: str) -> str:
        self.counts[kind] += 1
        return f"[{kind}]"

    def sub(self, pattern: re.Pattern[str], kind: str) -> None:
        self.text = pattern.sub(lambda m: self.found(kind), self.text)

    def set_aside(self, pattern: re.Pattern[str]) -> None:
        def keep(m: re.Match[str]) -> str:
            self._kept.append(m.group(0))
            return f"\ue000{chr(0xE100 + len(self._kept) - 1)}\ue001"
        self.text = pattern.sub(keep, self.text)

    def restore(self) -> None:
        self.text = re.sub("\ue000(.)\ue001", lambda m: self._kept[ord(m.group(1)) - 0xE100],
                           self.text)

    # ---- secrets ---------------------------------------------------------------------------
    def secrets(self) -> None:
        self.sub(pii.PEM, "key")
        self.text = pii.URL_USERINFO.sub(lambda m: m.group(1) + self.found("secret") + "@",
                                         self.text)
        self.text = pii.URL_PARAM.sub(lambda m: m.group(1) + self.found("secret"), self.text)
        for kind, pattern in pii.TOKEN_PATTERNS:
            self.sub(pattern, kind)

        def header(m: re.Match[str]) -> str:
            value = m.group(0).split(None, 1)[1]
            if not re.search(r"[\d+/=]", value) and (value.islower() or value.isupper()):
                return m.group(0)  # a plain word after "basic"/"bearer"
            return f"{m.group(1)} {self.found('token')}"
        self.text = pii.AUTH_HEADER.sub(header, self.text)

        def assignment(m: re.Match[str]) -> str:
            value = m.group(3) or m.group(4) or ""
            name = m.group(1).rstrip(" :=").lower()
            if _PLACEHOLDER.match(value):
                return m.group(0)
            if name in pii.WEAK_SECRET_NAMES and not _STRONG_VALUE.match(value):
                return m.group(0)  # "token: piece", "secret: sauce"
            quote = m.group(2) or ""
            return f"{m.group(1)}{quote}{self.found('secret')}{quote}"
        self.text = pii.ASSIGNMENT.sub(assignment, self.text)

        def said(m: re.Match[str]) -> str:
            value = m.group(3) or m.group(4) or ""
            if _PLACEHOLDER.match(value):
                return m.group(0)
            quote = m.group(2) or ""
            close = "" if not quote else ("”" if quote == "“" else quote)
            return f"{m.group(1)}{quote}{self.found('secret')}{close}"
        self.text = pii.SAID_SECRET.sub(said, self.text)

    # ---- personal data ---------------------------------------------------------------------
    def identifiers(self) -> None:
        self.sub(pii.EMAIL, "email")

        def iban(m: re.Match[str]) -> str:
            raw = m.group(0)
            for end in range(len(raw), 14, -1):  # the longest prefix that checks out
                if raw[end - 1] != " " and pii.iban_ok(raw[:end]):
                    return self.found("iban") + raw[end:]
            return raw
        self.text = pii.IBAN.sub(iban, self.text)

        def cnpj(m: re.Match[str]) -> str:
            raw = m.group(0)
            shaped = re.fullmatch(r"\d{2}\.\d{3}\.\d{3}/\d{4}-\d{2}", raw) is not None
            return self.found("cnpj") if shaped or pii.cnpj_ok(raw) else raw
        self.text = pii.CNPJ.sub(cnpj, self.text)

        def cpf(m: re.Match[str]) -> str:
            raw = m.group(0)
            shaped = re.fullmatch(r"\d{3}\.\d{3}\.\d{3}-\d{2}", raw) is not None
            return self.found("cpf") if shaped or pii.cpf_ok(raw) else raw
        self.text = pii.CPF.sub(cpf, self.text)
        self.sub(pii.RG, "rg")
        self.text = pii.RG_WORD.sub(lambda m: m.group(1) + self.found("rg"), self.text)

        def card(m: re.Match[str]) -> str:
            number = pii.digits(m.group(0))
            if 13 <= len(number) <= 19 and pii.CARD_PREFIX.match(number) and luhn_ok(number):
                return self.found("card")
            return m.group(0)
        self.text = pii.CARD.sub(card, self.text)
        self.text = pii.CEP.sub(
            lambda m: m.group(0)[:m.start(1) - m.start(0)] + self.found("cep"), self.text)

    def addresses(self) -> None:
        def ipv4(m: re.Match[str]) -> str:
            if pii.VERSION_BEFORE.search(self.text[max(0, m.start() - 12):m.start()]):
                return m.group(0)  # "version 1.2.3.4"
            return self.found("ip")
        self.text = pii.IPV4.sub(ipv4, self.text)

        def ipv6(m: re.Match[str]) -> str:
            try:
                ipaddress.IPv6Address(m.group(0))
            except ValueError:
                return m.group(0)
            return self.found("ip")
        self.text = pii.IPV6.sub(ipv6, self.text)

    def phones(self) -> None:
        def phone(m: re.Match[str]) -> str:
            raw = m.group(0)
            number = pii.digits(raw)
            if pii.DATE.match(raw.strip()) or not 8 <= len(number) <= 15:
                return raw
            if re.fullmatch(r"(?:19|20)\d\d-(?:19|20)\d\d|\d\d00-\d\d00", raw):
                return raw  # "2023-2024", "1000-2000": ranges, not numbers to call
            return self.found("phone")
        for pattern in pii.PHONE_PATTERNS:
            self.text = pattern.sub(phone, self.text)
        self.text = pii.PHONE_WORD.sub(
            lambda m: m.group(0)[:m.start(1) - m.start(0)] + self.found("phone"), self.text)


def scrub(text: str) -> ScrubResult:
    """Replace secrets and personal data in ``text`` with placeholders; count what was found."""
    s = _Scrubber(text)
    s.set_aside(pii.UUID)
    s.secrets()
    s.identifiers()
    s.addresses()
    s.phones()
    s.restore()
    return ScrubResult(s.text, s.counts)
