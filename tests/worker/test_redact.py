"""Redaction: a registered secret, or a per-job one, is masked as itself and in every escaped form an error message,
a JSON text or a URL gives it."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import h11
import pytest

from config.settings import load_settings
from worker import redact
from worker.redact import MASK, register, register_settings, variants

#: A secret with a character each kind of escaping rewrites: a newline, a quote, a slash, a plus, a space, an é.
ODD_SECRET = "sk-odd/se+cret 'é'\n"

#: How each form is made from the secret.
FORMS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "repr": lambda s: repr(s)[1:-1],
    "bytes repr": lambda s: repr(s.encode())[2:-1],
    "JSON": lambda s: json.dumps(s)[1:-1],
    "JSON, not ASCII-only": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "URL path": quote,
    "URL component": lambda s: quote(s, safe=""),
    "form value": quote_plus,
    "stripped": str.strip,
    "HTML": html.escape,
    "HTML, quotes kept": lambda s: html.escape(s, quote=False),
}


@pytest.fixture(autouse=True)
def no_registered_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with nothing registered, and what it registers is forgotten afterwards."""
    monkeypatch.setattr(redact, "_secrets", frozenset())
    monkeypatch.setattr(redact, "_groups", ())


@pytest.mark.parametrize("form", FORMS)
def test_a_registered_secret_is_masked_in_each_escaped_form(form: str) -> None:
    register([ODD_SECRET])
    shown = FORMS[form](ODD_SECRET)
    assert redact.redact(f"refused <{shown}> here") == f"refused <{MASK}> here"


@pytest.mark.parametrize("form", FORMS)
def test_a_per_job_secret_is_masked_in_each_escaped_form(form: str) -> None:
    shown = FORMS[form](ODD_SECRET)
    assert redact.redact(f"refused <{shown}> here", (ODD_SECRET,)) == f"refused <{MASK}> here"


def test_h11s_error_for_an_api_key_ending_in_a_newline_is_masked() -> None:
    key = "sk-live-0123456789abcdef\n"
    register([key])
    with pytest.raises(h11.LocalProtocolError) as caught:
        h11.Request(method="GET", target="/", headers=[("Host", "api"), ("X-CEKURA-API-KEY", key.encode())])
    assert "0123456789abcdef" in str(caught.value)  # the leak this guards against: the value, escaped

    masked = redact.redact(str(caught.value))

    assert "0123456789abcdef" not in masked
    assert MASK in masked


def test_forms_are_worked_out_at_registration_without_duplicates() -> None:
    assert variants("sk-plain-0123_abc.XYZ~") == ("sk-plain-0123_abc.XYZ~",)  # every form alike: one test
    forms = variants(ODD_SECRET)
    assert len(forms) == len(set(forms))
    assert set(forms) == {make(ODD_SECRET) for make in FORMS.values()}
    assert [len(f) for f in forms] == sorted((len(f) for f in forms), reverse=True)  # longest masked first

    register([ODD_SECRET])
    [(anchor, registered)] = redact._groups
    assert registered == forms
    assert all(anchor in form for form in forms)


def test_text_without_a_secret_is_returned_unchanged() -> None:
    register([ODD_SECRET, "sk-plain-0123"])
    text = "job_completed polls=3 status=completed url=https://api.cekura.ai/x?y=%20z"
    assert redact.redact(text) is text


def test_secrets_shorter_than_the_minimum_are_not_masked() -> None:
    register(["ab\n"])
    assert redact.redact("ab\\n and ab%0A") == "ab\\n and ab%0A"
    assert redact.redact("ab\\n", ("ab\n",)) == "ab\\n"


def test_the_redis_password_is_masked_as_written_in_the_url_and_decoded() -> None:
    settings = load_settings(cekura_api_key="sk-settings-key", redis_url="redis://:p%40ss%2Fword-1@redis.internal/0")
    register_settings(settings)
    assert redact.redact("AUTH p@ss/word-1 failed") == f"AUTH {MASK} failed"
    assert redact.redact("url redis://:p%40ss%2Fword-1@redis.internal/0") == f"url redis://:{MASK}@redis.internal/0"
    assert redact.redact("key 'sk-settings-key'") == f"key '{MASK}'"
