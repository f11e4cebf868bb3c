"""Secret redaction: the deployment's secrets are registered here and masked wherever text leaves the process.

Log lines, job state, result events, error texts and CLI output pass through `redact()`; this is the last
line of defence behind the first one, which is that secrets are never put in those places at all. Per-job
secrets (a provider `api_key`) are not registered, which would grow the list with every job; the code that
holds one passes it as `extra` to the texts it produces.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from config.settings import Settings

#: Secrets shorter than this are not masked: they would mask ordinary words.
DEFAULT_MIN_SECRET_LEN = 4

MASK = "***"

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()


def register(values: Iterable[str | None]) -> None:
    """Remember secrets to mask from now on in this process."""
    global _secrets
    fresh = {v for v in values if v and len(v) >= DEFAULT_MIN_SECRET_LEN}
    if fresh - _secrets:
        with _lock:
            _secrets = _secrets | fresh


def register_settings(settings: Settings) -> None:
    """Register this deployment's secrets: the Cekura API key and the Redis password."""
    password = urlsplit(settings.redis_url.get_secret_value()).password
    key = settings.cekura_api_key.get_secret_value() if settings.cekura_api_key else None
    register([key, password])


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every registered secret, and each of `extra`, replaced by `***`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for secret in extra:
        if len(secret) >= DEFAULT_MIN_SECRET_LEN and secret in text:
            text = text.replace(secret, MASK)
    return text
