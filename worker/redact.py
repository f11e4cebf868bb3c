"""Secret redaction: every secret this process learns is registered here and masked wherever text leaves it.

Log lines, job state, result events, error texts and CLI output pass through `redact()`; this is the
last line of defence behind the first one, which is that secrets are never put in those places at all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

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


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
