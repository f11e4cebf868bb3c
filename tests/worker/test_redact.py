"""Redaction: a registered secret, or a per-job one, is masked as itself and in every escaped form an error message,
a JSON text or a URL gives it."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import h11
import pytest

from config.settings import load_settings
from worker import redact
from worker.redact import MASK, register, register_settings

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
    "JSON, slashes escaped (PHP)": lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    "JSON, every character \\u-escaped": lambda s: "".join(f"\\u{ord(c):04x}" for c in s),
    "JSON in a JSON string": lambda s: json.dumps(json.dumps(s))[3:-3],
    "URL component, lower-case hex": lambda s: re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(s, safe="")),
    "HTML decimal references": lambda s: "".join(c if c.isalnum() else f"&#{ord(c)};" for c in s),
    "HTML hex references": lambda s: "".join(c if c.isalnum() else f"&#x{ord(c):X};" for c in s),
    "upper case": str.upper,
    "swapped case": str.swapcase,
}

#: A prefix base64-encoded with the secret (a Basic credential's `user:`), for each of the 3 alignments.
PREFIXES = ("", "u:", "us:")


@pytest.fixture(autouse=True)
def no_registered_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with nothing registered, and what it registers is forgotten afterwards."""
    monkeypatch.setattr(redact, "_secrets", frozenset())
    monkeypatch.setattr(redact, "_matchers", ())


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


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_the_base64_of_a_secret_is_masked_whatever_precedes_it(prefix: str, encode: Callable[[bytes], bytes]) -> None:
    secret = "sk-b64/se+cret-0123456789?>"
    encoded = encode(f"{prefix}{secret}!".encode()).decode()
    masked = redact.redact(f"Basic {encoded}", (secret,))
    assert MASK in masked
    assert len(masked) - len(f"Basic {MASK}") <= 8  # only characters that carry bits of the prefix or suffix remain


def test_a_secret_mixing_spellings_is_masked() -> None:
    secret = "sk-mix/se+cret&x"
    shown = "SK-mix\\u002fse%2bCRET&amp;x"  # JSON, percent, HTML and case changes in one text
    assert redact.redact(f"<{shown}>", (secret,)) == f"<{MASK}>"


def test_a_secrets_pattern_is_worked_out_once_at_registration() -> None:
    register([ODD_SECRET])
    [matcher] = redact._matchers
    register([ODD_SECRET])
    assert redact._matchers == (matcher,)
    assert all(anchor == anchor.lower() for anchor in matcher.anchors)  # tested in the lower-cased text


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


def test_a_header_values_credential_is_masked_without_its_scheme() -> None:
    from actors.kinds.base import JobKind

    basic = base64.b64encode(b"ops:pa55word-77").decode()
    headers = {"Authorization": "Bearer mcp-tok-0123", "X-Proxy": f"Basic {basic}", "X-Other": "Token ab"}
    secrets = JobKind.secret_values({"mcp_server_headers": json.dumps(headers)})
    assert "ab" not in secrets  # a credential too short to mask is not listed on its own
    text = "invalid token mcp-tok-0123; user ops:pa55word-77 (password pa55word-77) sent " + basic
    assert redact.redact(text, secrets) == f"invalid token {MASK}; user {MASK} (password {MASK}) sent {MASK}"


def test_the_otlp_exporters_header_values_are_masked_as_written_decoded_and_without_their_scheme() -> None:
    settings = load_settings(
        otel_exporter_otlp_headers="x-honeycomb-team=hc-key-0123456789,x-dataset=cekura",
        otel_exporter_otlp_traces_headers="Authorization=Bearer%20otlp-tok%2F9876",
    )
    register_settings(settings)
    assert redact.redact("export refused for team hc-key-0123456789") == f"export refused for team {MASK}"
    assert redact.redact("bad token otlp-tok/9876") == f"bad token {MASK}"
    assert redact.redact("header Bearer%20otlp-tok%2F9876") == f"header {MASK}"
    assert redact.redact("dataset cekura") == "dataset cekura"  # a header not named like a credential is not
