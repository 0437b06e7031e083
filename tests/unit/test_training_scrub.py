"""PII and secret scrubbing patterns."""

from __future__ import annotations

import pytest

from training.scrub import luhn_ok, scrub

TELEGRAM = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0"  # 35 chars after the colon
DISCORD = "MTA4MjM0NTY3ODkwMTIzNDU2Nw.GhIjKl.abcdefghijklmnopqrstuvwxyzABCDEFGH"


@pytest.mark.parametrize(("text", "kind"), [
    ("mail me at jane.doe+x@example.co.uk please", "email"),
    ("call +1 415-555-0134 tomorrow", "phone"),
    ("my number is (415) 555-0134", "phone"),
    ("ring 0044 20 7946 0958", "phone"),
    ("card 4111 1111 1111 1111 exp 12/29", "card"),
    ("card 5500-0000-0000-0004", "card"),
    (f"bot token {TELEGRAM} leaked", "token"),
    (f"discord {DISCORD}", "token"),
    ("key sk-proj-abcDEF1234567890abcdef1234", "key"),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "key"),
    ("AKIAIOSFODNN7EXAMPLE", "key"),
    ("Authorization: Bearer abcdefghijklmnop1234567890", "token"),
    ("password=hunter2hunter2", "secret"),
    ("api_key: 'q9w8e7r6t5y4'", "secret"),
    ("server at 192.168.10.42 is down", "ip"),
    ("v6 host 2001:db8::8a2e:370:7334 ok", "ip"),
])
def test_each_kind_is_replaced(text: str, kind: str) -> None:
    res = scrub(text)
    assert f"[{kind}]" in res.text, res.text
    assert res.counts[kind] >= 1


def test_secrets_do_not_survive_anywhere() -> None:
    text = (f"tg {TELEGRAM}, mail a@b.io, card 4111111111111111, ip 10.0.0.1, "
            "phone +351 912 345 678")
    out = scrub(text).text
    for secret in (TELEGRAM, "a@b.io", "4111111111111111", "10.0.0.1", "912 345 678"):
        assert secret not in out


@pytest.mark.parametrize("text", [
    "The meeting is on 2024-05-17 at 10:30.",
    "Version 1.2.3 fixed 42 bugs in 2023.",
    "Order 4111 1111 1111 1112 (not a valid card)",
    "Add 12345 and 678 to get 13023.",
    "Use ratio 3:4 and port 8080.",
    "Python 3.11 needs 2 GB RAM.",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    res = scrub(text)
    assert res.text == text and not res.counts


def test_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
