"""Secret redaction: the deployment's secrets are registered here and masked wherever text leaves the process.

Log lines, job state, result events, error texts and CLI output pass through `redact()`; this is the last
line of defence behind the first one, which is that secrets are never put in those places at all. Per-job
secrets (a provider `api_key`) are not registered, which would grow the list with every job; the code that
holds one passes it as `extra` to the texts it produces.

A secret rarely leaks as itself: an exception quotes it with `repr()` (h11 refuses a header value and shows
`b'sk-...\\n'`), a JSON document escapes it, a URL percent-encodes it. So each secret is masked in every form in
`variants()`. They are worked out once, when the secret is registered, because `redact()` runs on every string
of every log line, and they are tested only in a text that holds a part they all share: a text without a secret
costs one substring test per secret, as it did before the forms were added.
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus, unquote, urlsplit

if TYPE_CHECKING:
    from config.settings import Settings

#: Secrets shorter than this are not masked (they would mask ordinary words), so settings and params refuse them.
DEFAULT_MIN_SECRET_LEN = 4

MASK = "***"

#: Characters every escaped form keeps as they are, so a run of them in a secret appears verbatim in each form.
_PLAIN_RUN = re.compile(r"[A-Za-z0-9_.~-]+")

#: A secret's forms, longest first, under an anchor they all contain (tested first, so a text without it costs
#: one substring test per secret).
_Group = tuple[str, tuple[str, ...]]

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_groups: tuple[_Group, ...] = ()


def variants(secret: str) -> tuple[str, ...]:
    """`secret` and each distinct escaped form it can take in an error message, a JSON text or a URL, longest first.

    The forms: Python's `repr()` of the string and of its UTF-8 bytes (without the quotes), JSON-escaped with and
    without `ensure_ascii`, percent-encoded as a path (`quote`), a query component and a form value, HTML-escaped
    (with and without quotes), and the secret without surrounding whitespace.
    """
    forms = {
        secret,
        secret.strip(),
        html.escape(secret),
        html.escape(secret, quote=False),
        repr(secret)[1:-1],
        repr(secret.encode("utf-8", "surrogatepass"))[2:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret),
        quote(secret, safe=""),
        quote_plus(secret),
    }
    return tuple(sorted(forms, key=len, reverse=True))


def _group(secret: str) -> _Group:
    # The longest run of plain characters is in every form; a secret with none falls back to testing each form.
    anchor = max(_PLAIN_RUN.findall(secret), key=len, default="")
    return anchor, variants(secret)


def register(values: Iterable[str | None]) -> None:
    """Remember secrets, with every escaped form of each, to mask from now on in this process."""
    global _secrets, _groups
    fresh = {v for v in values if v and len(v) >= DEFAULT_MIN_SECRET_LEN}
    if fresh - _secrets:
        with _lock:
            added = sorted(fresh - _secrets)
            _groups = _groups + tuple(_group(secret) for secret in added)
            _secrets = _secrets | fresh


def register_settings(settings: Settings) -> None:
    """Register this deployment's secrets: the Cekura API key, the Redis password (as written and decoded), the
    Sentinels' password and the webhook secret."""
    password = urlsplit(settings.redis_url.get_secret_value()).password
    key = settings.cekura_api_key.get_secret_value() if settings.cekura_api_key else None
    sentinel = settings.redis_sentinel_password.get_secret_value() if settings.redis_sentinel_password else None
    webhook = settings.cekura_webhook_secret.get_secret_value() if settings.cekura_webhook_secret else None
    register([key, password, unquote(password) if password else None, sentinel, webhook])


def _mask(text: str, groups: Iterable[_Group]) -> str:
    # Every form of every secret that occurs, longest first: a secret that contains another (a password that is a
    # prefix of the API key, say) is masked whole before the shorter one could cut it apart.
    found = {form for anchor, forms in groups if anchor in text for form in forms if form and form in text}
    for form in sorted(found, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every registered secret, and each of `extra`, replaced by `***` in any of its escaped forms."""
    if extra:
        extra_groups = tuple(_group(secret) for secret in extra if len(secret.strip()) >= DEFAULT_MIN_SECRET_LEN)
        return _mask(text, _groups + extra_groups)
    return _mask(text, _groups)
