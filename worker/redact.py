"""Secret redaction: the deployment's secrets are registered here and masked wherever text leaves the process.

Log lines, job state, result events, error texts and CLI output pass through `redact()`; this is the last
line of defence behind the first one, which is that secrets are never put in those places at all. Per-job
secrets (a provider `api_key`) are not registered, which would grow the list with every job; the code that
holds one passes it as `extra` to the texts it produces.

A secret rarely leaks as itself: an exception quotes it with `repr()` (h11 refuses a header value and shows
`b'sk-...\\n'`), a JSON document escapes it (`\\/`, `\\u002f`), a URL percent-encodes it (`%2F` or `%2f`), an HTML
page writes `&#47;`, an error page shouts it in upper case, a proxy quotes it base64-encoded. So each secret is
matched by one pattern (`_pattern`) in which each of its characters may take any of those spellings, in any mix
and any case, and by its base64 forms. The pattern is worked out once per secret, because `redact()` runs on every
string of every log line, and it runs only on a text that holds one of the secret's anchors (`_anchors`): a text
without a secret costs one `lower()` and a few substring tests per secret.
"""

from __future__ import annotations

import base64
import functools
import html.entities
import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from config.settings import Settings

#: Secrets shorter than this are not masked (they would mask ordinary words), so settings and params refuse them.
DEFAULT_MIN_SECRET_LEN = 4

#: A base64 form shorter than this is not masked: too short to belong to the secret alone.
DEFAULT_MIN_BASE64_CHARS = 8

#: Per-job secrets whose matchers are kept, so a job's steps don't work them out on every call.
DEFAULT_EXTRA_CACHE = 256

MASK = "***"

#: Letters and digits: every form but one that escapes letters too keeps them (in some case), so a run of them in a
#: secret is in the lower-cased text wherever a form of the secret is.
_PLAIN_RUN = re.compile(r"[A-Za-z0-9]+")
_URLSAFE = str.maketrans("+/", "-_")

#: HTML5's named character references, by the character they stand for (`&sol;` for '/', `&amp;` for '&').
_NAMED: dict[str, list[str]] = {}
for _name, _char in html.entities.html5.items():
    _NAMED.setdefault(_char, []).append(_name)


@dataclass(frozen=True, eq=False)
class _Matcher:
    """One secret's pattern, run only on a text whose lower-cased form holds one of its `anchors`, or, when it
    holds `\\u00`-escapes, its `escaped` anchor."""

    anchors: tuple[str, ...]
    escaped: str
    pattern: re.Pattern[str]
    size: int


_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_matchers: tuple[_Matcher, ...] = ()


def _spellings(char: str) -> str:
    """A regex for every way one character of a secret is written in the forms masked: as itself; escaped by
    `repr()` (of the string or of its UTF-8 bytes), by JSON (`\\uXXXX`, surrogate pairs, `\\/`) or with a backslash
    (`\\'`); percent-encoded (`+` for a space); as an HTML named or numeric reference (decimal or hex)."""
    code = ord(char)
    utf8 = char.encode("utf-8", "surrogatepass")
    forms = {char, repr(char)[1:-1], json.dumps(char)[1:-1], "".join(f"\\x{b:02x}" for b in utf8)}
    forms.add("".join(f"%{b:02x}" for b in utf8))
    if code < 0x10000:
        forms.add(f"\\u{code:04x}")
    else:
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        forms |= {f"\\u{high:04x}\\u{low:04x}", f"\\U{code:08x}"}
    if code < 0x100:
        forms.add(f"\\x{code:02x}")
    if char.isascii() and not char.isalnum() and char.isprintable():
        forms.add("\\" + char)
    if char == " ":
        forms.add("+")
    forms |= {f"&{name}" for name in _NAMED.get(char, ())}
    # Grouped by their first character, so the pattern (compiled once per secret) stays short.
    escapes = sorted((re.escape(form[1:]) for form in forms if form.startswith("\\") and form != "\\"), key=len)
    plain = sorted((re.escape(form) for form in forms if not form.startswith("\\") or form == "\\"), key=len)
    alternatives = [*reversed(plain), r"\\+(?:" + "|".join(reversed(escapes)) + ")", rf"&\#(?:0*{code}|x0*{code:x});"]
    return "(?:" + "|".join(alternatives) + ")"


def _pattern(secret: str) -> str:
    """Case-insensitive: each character of the secret in any spelling (surrounding whitespace optional, since some
    forms drop it)."""
    core = secret.strip()
    start = len(secret) - len(secret.lstrip())
    lead, trail = secret[:start], secret[start + len(core) :]
    optional = ["".join(_spellings(c) + "?" for c in part) for part in (lead, trail)]
    return "(?i:" + optional[0] + "".join(_spellings(c) for c in core) + optional[1] + ")"


def _base64_forms(secret: str) -> list[tuple[str, str]]:
    """The part of base64(prefix + secret) that the secret alone decides, for the 3 alignments a prefix of 0, 1 or 2
    bytes gives it (a `user:password` pair, say), standard and URL-safe; only those long enough to be specific."""
    data = secret.encode("utf-8", "surrogatepass")
    forms = []
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + data).decode()
        middle = encoded[(8 * pad + 5) // 6 : 8 * (pad + len(data)) // 6]
        if len(middle) >= DEFAULT_MIN_BASE64_CHARS:
            forms.append((middle, middle.translate(_URLSAFE)))
    return forms


@functools.lru_cache(maxsize=DEFAULT_EXTRA_CACHE)
def _matcher(secret: str) -> _Matcher:
    # The longest run of plain characters is in every form but those escaping letters too, and one that escapes
    # every character holds its first one's `\u00XX`; each base64 form (standard and URL-safe alike) holds its
    # longest alphanumeric run. A secret with no plain character is always tried.
    run = max(_PLAIN_RUN.findall(secret), key=len, default="")
    anchors = {run.lower()}
    encoded = _base64_forms(secret)
    for standard, urlsafe in encoded:
        part = max(_PLAIN_RUN.findall(standard), key=len, default="")
        anchors |= {part.lower()} if len(part) >= DEFAULT_MIN_SECRET_LEN else {standard.lower(), urlsafe.lower()}
    forms = sorted({form for pair in encoded for form in pair}, key=len, reverse=True)
    pattern = re.compile("|".join([_pattern(secret), *map(re.escape, forms)]))
    return _Matcher(tuple(sorted(anchors)), f"u{ord(run[0]):04x}" if run else "", pattern, len(secret))


def register(values: Iterable[str | None]) -> None:
    """Remember secrets, with the pattern for every form of each, to mask from now on in this process."""
    global _secrets, _matchers
    fresh = {v for v in values if v and len(v.strip()) >= DEFAULT_MIN_SECRET_LEN}
    if fresh - _secrets:
        with _lock:
            added = sorted(fresh - _secrets)
            _matchers = _matchers + tuple(_matcher(secret) for secret in added)
            _secrets = _secrets | fresh


#: Words in a header's name that make its value a credential (`Authorization`, `x-honeycomb-team`, `DD-API-KEY`,
#: `signoz-access-token`, `uptrace-dsn`...): other values (a dataset's name, an org id) are not masked, which would
#: blank them out of every log line.
_CREDENTIAL_HEADER = re.compile(r"auth|key|token|secret|team|pass|credential|signature|dsn", re.IGNORECASE)

#: An `Authorization`-style value: its scheme, then the credential.
_AUTH_SCHEME = re.compile(r"(?i)(bearer|basic|token|bot|apikey|api-key|key|dpop|digest|negotiate|ntlm)\s+(\S.*)")

#: The secret part of a URL-shaped credential (`https://<token>@host`, a DSN).
_URL_USERINFO = re.compile(r"^[a-z][a-z0-9+.-]*://([^@/]+)@", re.IGNORECASE)


def credentials(value: str) -> list[str]:
    """The credential in an `Authorization`-style value (`Bearer <token>`, `Basic <base64>`, `Token <t>`...), which
    a server may quote without its scheme; for `Basic`, also the decoded `user:password` and the password. Only
    parts long enough to be masked."""
    match = _AUTH_SCHEME.fullmatch(value.strip())
    if match is None:
        return []
    found = [match[2]]
    if match[1].lower() == "basic":
        try:
            decoded = base64.b64decode(match[2], validate=True).decode()
        except ValueError:  # not base64, or not UTF-8 once decoded
            decoded = ""
        found += [decoded, decoded.partition(":")[2]]
    return [part for part in found if len(part.strip()) >= DEFAULT_MIN_SECRET_LEN]


def header_values(headers: str) -> list[str]:
    """The credentials in an `OTEL_EXPORTER_OTLP_HEADERS`-style list (`key=value,...`, values percent-encoded): the
    value of each header named like one, as written and decoded, and what a server may quote alone: the credential
    without its scheme (`Bearer <token>`; a `Basic` one decoded too) and a DSN's user part (`https://<token>@host`)."""
    values: list[str] = []
    for pair in headers.split(","):
        name, _, value = (part.strip() for part in pair.partition("="))
        if _CREDENTIAL_HEADER.search(unquote(name)):
            decoded = unquote(value).strip()
            values += [value, decoded, decoded.rpartition(" ")[2], *credentials(decoded)]
            userinfo = _URL_USERINFO.match(decoded)
            if userinfo:
                values += [userinfo[1], unquote(userinfo[1]), *userinfo[1].split(":")]
    return values


def register_settings(settings: Settings) -> None:
    """Register this deployment's secrets: the Cekura API key, the Redis password (as written and decoded), the
    Sentinels' password, the webhook secret, and the values of the OTLP exporter's headers (a tracing vendor's key)."""
    password = urlsplit(settings.redis_url.get_secret_value()).password
    key = settings.cekura_api_key.get_secret_value() if settings.cekura_api_key else None
    sentinel = settings.redis_sentinel_password.get_secret_value() if settings.redis_sentinel_password else None
    webhook = settings.cekura_webhook_secret.get_secret_value() if settings.cekura_webhook_secret else None
    otlp = [
        value
        for headers in (settings.otel_exporter_otlp_headers, settings.otel_exporter_otlp_traces_headers)
        if headers is not None
        for value in header_values(headers.get_secret_value())
    ]
    register([key, password, unquote(password) if password else None, sentinel, webhook, *otlp])


#: A `\xNN` escape (`repr()` of bytes, or of a string's control characters).
_HEX_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")


def _unhex(match: re.Match[str]) -> str:
    return chr(int(match[1], 16))


def _mask(text: str, matchers: tuple[_Matcher, ...]) -> str:
    # Longest secret first: a secret that contains another (a password that is a prefix of the API key, say) is
    # masked whole before the shorter one could cut it apart.
    if not matchers:
        return text
    lowered = text.lower()
    found = [m for m in matchers for anchor in m.anchors if anchor in lowered]
    if "u00" in lowered:
        found += [m for m in matchers if m.escaped in lowered]
    if "%" in lowered or "&#" in lowered or "\\x" in lowered:  # every character escaped leaves no anchor as it is:
        decoded = html.unescape(unquote(_HEX_ESCAPE.sub(_unhex, lowered))).lower()  # look in the decoded text
        found += [m for m in matchers for anchor in m.anchors if anchor in decoded]
    for matcher in sorted(set(found), key=lambda m: m.size, reverse=True):
        text = matcher.pattern.sub(MASK, text)
    return text


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every registered secret, and each of `extra`, replaced by `***` in any of its escaped forms."""
    if extra:
        extras = tuple(_matcher(secret) for secret in extra if len(secret.strip()) >= DEFAULT_MIN_SECRET_LEN)
        return _mask(text, _matchers + extras)
    return _mask(text, _matchers)
