"""The errors cekura-worker raises, as one small tree.

CekuraWorkerError
├── ConfigError          bad settings: stop at start-up
├── InvalidRequest       a job request that can't be accepted: becomes a `rejected` event
└── CekuraError          a call to the Cekura API went wrong
    ├── PermanentError   400/401/403/404/405, invalid response: the job ends `failed`, never retried
    └── TransientError   network, timeout, 5xx: back off and try again (`maybe_sent`: the request may have
        │                reached Cekura, so a start that is not safe to repeat is not sent again)
        └── RateLimited  429: the whole fleet waits `retry_after_s`
"""

from __future__ import annotations


class CekuraWorkerError(Exception):
    """Base class for every error raised by cekura-worker."""


class ConfigError(CekuraWorkerError):
    """Raised when a setting is missing or invalid."""


class InvalidRequest(CekuraWorkerError):
    """Raised when a job request is malformed; the message says what is wrong and nothing secret."""


class CekuraError(CekuraWorkerError):
    """Raised when a call to the Cekura API fails."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class PermanentError(CekuraError):
    """Raised when Cekura refuses a request or answers nonsense; retrying would not help.

    `refused` is True only when Cekura itself answered with a 4xx refusal: the request certainly did nothing there.
    An answer that can't be used (too large, not JSON, an unexpected status such as 204) may come after Cekura
    acted on the request."""

    def __init__(self, message: str, *, status_code: int | None = None, refused: bool = False) -> None:
        super().__init__(message, status_code=status_code)
        self.refused = refused


class TransientError(CekuraError):
    """Raised when a Cekura call failed in a way that may pass: connection, timeout, 5xx.

    `maybe_sent` is False only when the request certainly never reached Cekura (the connection was never made);
    after a read timeout, a dropped connection or a 5xx, Cekura may have acted on it.
    """

    def __init__(self, message: str, *, status_code: int | None = None, maybe_sent: bool = True) -> None:
        super().__init__(message, status_code=status_code)
        self.maybe_sent = maybe_sent


class RateLimited(TransientError):
    """Raised when Cekura answers 429; `retry_after_s` is how long the fleet should wait."""

    def __init__(self, message: str, *, retry_after_s: float, status_code: int | None = 429) -> None:
        super().__init__(message, status_code=status_code, maybe_sent=False)  # Cekura refused it: nothing started
        self.retry_after_s = retry_after_s
