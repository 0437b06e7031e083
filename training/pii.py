"""The patterns and check digits :mod:`training.scrub` uses, one place per format.

Every pattern that could match ordinary numbers is confirmed by a validator before it counts:
cards by Luhn and a known issuer prefix, IBANs by ISO 13616 mod-97, CPF and CNPJ by their two
check digits. Formats without a checksum (phones, RG, CEP) match only in the shapes people write
them in, or next to a word that names them ("tel", "celular", "RG", "CEP", a street), so version
numbers, order numbers, prices and UUIDs stay as they are.
"""

from __future__ import annotations

import re

# ---- secrets ------------------------------------------------------------------------------------
PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?"
                 r"(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
# scheme://user:password@host -> the credentials go, the host stays.
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@:]+:[^\s/@]+@")
# A token in a URL's query string.
URL_PARAM = re.compile(r"(?i)([?&](?:access_token|token|api_key|apikey|key|secret|sig|signature|"
                       r"auth|password|pwd|code)=)[^\s&#]{6,}")
WEAK_SECRET_NAMES = ("token", "secret")  # also ordinary words: the value must look like a key
# Provider key formats (kind "token" for bot/session tokens, "key" for API keys).
TOKEN_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    # Telegram bot token, also inside https://api.telegram.org/bot<token>/...
    ("token", re.compile(r"(?:(?<![\w])|(?<=/bot))\d{5,16}:[A-Za-z0-9_-]{35}(?![\w-])")),
    # Discord bot token: base64 user id . timestamp . hmac (and legacy mfa. tokens).
    ("token", re.compile(r"(?<![\w.])[MNO][A-Za-z\d_-]{23,27}\.[A-Za-z\d_-]{6,7}"
                         r"\.[A-Za-z\d_-]{27,40}(?![\w-])")),
    ("token", re.compile(r"\bmfa\.[A-Za-z\d_-]{20,}")),
    ("token", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("key", re.compile(r"\bsk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_-]{16,}")),  # OpenAI / Anthropic
    ("key", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})")),
    ("key", re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}")),  # GitLab
    ("key", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),  # Slack
    ("key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),  # AWS access key id
    ("key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),  # Google
    ("key", re.compile(r"\bhf_[A-Za-z0-9]{30,}")),  # Hugging Face
    ("key", re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}")),  # Stripe
    ("key", re.compile(r"\bwhsec_[A-Za-z0-9]{24,}")),  # Stripe webhook secret
    ("key", re.compile(r"\bSG\.[A-Za-z0-9_-]{16,32}\.[A-Za-z0-9_-]{16,64}")),  # SendGrid
    ("key", re.compile(r"\bnpm_[A-Za-z0-9]{36}\b")),  # npm
    ("key", re.compile(r"\bgsk_[A-Za-z0-9]{40,}")),  # Groq
    ("key", re.compile(r"\b(?:AC|SK)[0-9a-f]{32}\b")),  # Twilio account SID / API key
]
AUTH_HEADER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/-]{12,}=*")
_SECRET_NAMES = (r"(?:aws_)?secret(?:_access)?(?:[_-]?key)?|api[_-]?key|apikey|access[_-]?key|"
                 r"access[_-]?token|auth[_-]?token|refresh[_-]?token|client[_-]?secret|token|"
                 r"password|passwd|pwd|passphrase|senha|palavra[- ]passe|private[_-]?key")
# name = value / name: value (the name may follow "_" as in aws_secret_access_key=...).
ASSIGNMENT = re.compile(rf"(?i)(?<![A-Za-z0-9])((?:{_SECRET_NAMES})\s*[:=]\s*)"
                        r"(?:(['\"])([^'\"\n]{4,})\2|([^\s'\",;&\[\]]{4,}))")
# "my password is X", "a senha é X", "the passphrase is 'a b c'".
SAID_SECRET = re.compile(r"(?i)\b((?:password|passphrase|passcode|pin|senha|palavra-passe)"
                         r"(?:\s+(?:is|was|será|é|eh|era|de\s+\w+\s+é))\s+)"
                         r"(?:(['\"“])([^'\"”\n]{3,})['\"”]|([^\s,;.!?]{3,}))")

# ---- personal data ------------------------------------------------------------------------------
EMAIL = re.compile(r"(?<![\w.+-])[\w.%+-]+@[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)*"
                   r"\.[^\W\d_]{2,}\b")
UUID = re.compile(r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
CNPJ = re.compile(r"(?<![\d./-])\d{2}\.?\d{3}\.?\d{3}/?\d{4}-?\d{2}(?![\d./-]*\d)")
CPF = re.compile(r"(?<![\d./-])\d{3}\.?\d{3}\.?\d{3}-?\d{2}(?![\d./-]*\d)")
RG = re.compile(r"(?<![\d.])\d{1,2}\.\d{3}\.\d{3}-[\dXx](?![\d])")
RG_WORD = re.compile(r"(?i)\b(RG[\s:.nº°]*)(\d{5,10}[\dXx]?)\b")
CARD = re.compile(r"(?<![\d.-])\d(?:[ .-]?\d){12,18}(?![\d])")
CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[068]|35|6)")
# "CEP 01310-100", or a CEP after a street word in the same sentence.
CEP = re.compile(r"(?i)(?:\bcep\b[\s:.nº°]*|(?:(?:\b(?:rua|avenida|travessa|alameda|estrada|"
                 r"rodovia|praça|endereço|moro)\b|\b(?:r|av)\.)[^\n]{0,80}?))(\d{5}-?\d{3})\b")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                  r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.]*\d)")
VERSION_BEFORE = re.compile(r"(?i)(?:\bv|\bversion|\bversão|\bversao|\brelease|\bbuild)\s*$")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
PHONE_PATTERNS = [
    # International: +CC or 00CC, then 2-5 groups (covers +55 11 9 1234-5678, 0044 20 7946 0958).
    re.compile(r"(?<![\w+])(?:\+|00)[1-9]\d{0,2}(?:[\s.-]?\(?\d{1,5}\)?){2,6}(?![\w])"),
    # (AA) 9XXXX-XXXX, (AA) 9 XXXX-XXXX, (AA) XXXX-XXXX, AA 9XXXX-XXXX, (415) 555-0134.
    re.compile(r"(?<![\w])\(\d{2,3}\)\s?(?:9[\s.]?)?\d{3,5}[\s.-]\d{4}(?![\w-])"),
    re.compile(r"(?<![\w.-])\d{2}\s(?:9[\s.]?)?\d{4}-\d{4}(?![\w-])"),
    # 415-555-0134 / 415.555.0134 (North American groups).
    re.compile(r"(?<![\w.-])\d{3}[.-]\d{3}[.-]\d{4}(?![\w-])"),
    # 91234-5678 / 9 1234-5678 / 1234-5678 (a Brazilian number without the area code).
    re.compile(r"(?<![\w.-])(?:9[\s.]?)?\d{4}-\d{4}(?![\w-])"),
]
# A bare run of digits counts as a phone only right after a word that says so.
PHONE_WORD = re.compile(r"(?i)\b(?:tel|telefone|fone|celular|cel|whats(?:app)?|zap|phone|mobile|"
                        r"call|ligue|liga|ligar|contato|contact|número|numero|number)\b"
                        r"[\s:.nº°é-]*(?:is\s+|é\s+)?(\d{8,13})\b")
DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def luhn_ok(number: str) -> bool:
    """The Luhn checksum used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    """ISO 13616: move the country and check digits to the end, letters to numbers, mod 97 == 1."""
    s = text.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    rotated = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rotated)) % 97 == 1


def _check_digit(nums: list[int], weights: list[int]) -> int:
    rest = sum(n * w for n, w in zip(nums, weights, strict=True)) % 11
    return 0 if rest < 2 else 11 - rest


def cpf_ok(text: str) -> bool:
    d = [int(c) for c in digits(text)]
    if len(d) != 11 or len(set(d)) == 1:
        return False
    return (_check_digit(d[:9], list(range(10, 1, -1))) == d[9]
            and _check_digit(d[:10], list(range(11, 1, -1))) == d[10])


def cnpj_ok(text: str) -> bool:
    d = [int(c) for c in digits(text)]
    if len(d) != 14 or len(set(d)) == 1:
        return False
    w1 = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]
    return _check_digit(d[:12], w1) == d[12] and _check_digit(d[:13], [6, *w1]) == d[13]
