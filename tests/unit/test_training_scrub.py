"""PII and secret scrubbing patterns."""

from __future__ import annotations

import pytest

from training.pii import cnpj_ok, cpf_ok, iban_ok
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
    # Brazil: mobiles with the separate 9, landlines, CPF/CNPJ/RG, CEP next to an address.
    ("me liga no +55 11 9 1234-5678", "phone"),
    ("meu cel (11) 91234-5678", "phone"),
    ("whats 11 9 8765-4321 ok", "phone"),
    ("fixo 3456-7890 de noite", "phone"),
    ("ligue 1234-5678", "phone"),
    ("celular 912345678", "phone"),
    ("CPF 123.456.789-09", "cpf"),
    ("cpf 12345678909 para a nota", "cpf"),
    ("CNPJ 12.345.678/0001-95", "cnpj"),
    ("cnpj 11222333000181", "cnpj"),
    ("RG 12.345.678-9", "rg"),
    ("RG nº 123456789", "rg"),
    ("Moro na Rua das Flores 12, CEP 01310-100", "cep"),
    ("entrega na Av. Paulista 1000, 01310-100 São Paulo", "cep"),
    # IBAN (mod-97), cards in any grouping, Unicode e-mail.
    ("IBAN DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX", "iban"),
    ("GB82WEST12345698765432", "iban"),
    ("conta BR1800360305000010009795493C1", "iban"),
    ("PT50000201231234567890154", "iban"),
    ("card 4111.1111.1111.1111", "card"),
    ("amex 3782 822463 10005", "card"),
    ("escreva para josé@exemplo.com.br", "email"),
    ("ou joão.silva@empresa.com", "email"),
    # Secrets: PEM, provider prefixes, URLs, headers, natural language.
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----", "key"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA", "key"),
    ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "secret"),
    ("AWS_SECRET_ACCESS_KEY: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'", "secret"),
    ("stripe sk_live_51HabcdefGHIJKLmnop1234", "key"),
    ("whsec_abcdefghijklmnopqrstuvwxyz12", "key"),
    ("gitlab glpat-abcdefghij1234567890", "key"),
    ("SG.abcdefghijklmnopqrstuv.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "key"),
    ("npm_abcdefghijklmnopqrstuvwxyz0123456789", "key"),
    ("gsk_" + "a1B2" * 13, "key"),
    ("twilio SK" + "0123456789abcdef" * 2, "key"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "token"),
    ("https://api.telegram.org/bot7012345678:AAEabcdefghijklmnopqrstuvwxyz012345/getMe", "token"),
    ("postgres://admin:S3cr3t@db.example.com/app", "secret"),
    ("callback https://x.io/cb?access_token=abcdef123456&page=2", "secret"),
    ("my password is hunter2hunter2", "secret"),
    ("a minha senha é abacate99", "secret"),
    ("senha: abacate99", "secret"),
    ("the passphrase is 'correct horse battery staple'", "secret"),
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
    # No over-scrubbing: versions, order numbers, prices, UUIDs, ranges, ordinary words.
    "Upgrade to version 1.2.3.4 tonight.",
    "Order 2024 1234 5678 shipped.",
    "The price is 1 234 567 890 won.",
    "Request 123e4567-e89b-12d3-a456-426614174000 failed.",
    "From 2023-2024 the team grew.",
    "Pages 1000-2000 are blank.",
    "Each token: a subword of the text.",
    "Set max token: 1024 for long answers.",
    "A basic understanding of Python helps.",
    "The secret: patience.",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    res = scrub(text)
    assert res.text == text and not res.counts


def test_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")


def test_check_digits() -> None:
    assert cpf_ok("123.456.789-09") and not cpf_ok("123.456.789-00")
    assert not cpf_ok("111.111.111-11")  # all the same digit: a placeholder, not a CPF
    assert cnpj_ok("11.222.333/0001-81") and not cnpj_ok("11.222.333/0001-80")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE88 3704 0044 0532 0130 00")


def test_unformatted_numbers_need_valid_check_digits() -> None:
    assert scrub("pedido 12345678900 enviado").text == "pedido 12345678900 enviado"
    assert scrub("lote 11222333000180").text == "lote 11222333000180"


def test_what_follows_a_finding_is_kept() -> None:
    assert scrub("IBAN DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX").text == \
        "IBAN [iban] BIC COBADEFFXXX"
    assert scrub("https://x.io/cb?token=abcdef123456&page=2").text == \
        "https://x.io/cb?token=[secret]&page=2"
    assert scrub("postgres://admin:S3cr3t@db.example.com/app").text == \
        "postgres://[secret]@db.example.com/app"
    assert scrub("call 11 9 8765-4321, thanks").text == "call [phone], thanks"
