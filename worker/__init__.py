"""cekura-worker: runs Cekura's asynchronous API jobs with Dramatiq on Redis.

The public API for Python producers is the `Client` and the error tree; everything else is the service itself.
Names are imported on first use, so `import worker` stays cheap (the health check imports no Dramatiq at all).

    from worker import Client, InvalidRequest
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.client import Client
    from worker.errors import (
        CekuraError,
        CekuraWorkerError,
        ConfigError,
        InvalidRequest,
        PermanentError,
        RateLimited,
        TransientError,
    )

_PUBLIC = {
    "Client": "worker.client",
    "CekuraWorkerError": "worker.errors",
    "ConfigError": "worker.errors",
    "InvalidRequest": "worker.errors",
    "CekuraError": "worker.errors",
    "PermanentError": "worker.errors",
    "TransientError": "worker.errors",
    "RateLimited": "worker.errors",
}

__all__ = [
    "CekuraError",
    "CekuraWorkerError",
    "Client",
    "ConfigError",
    "InvalidRequest",
    "PermanentError",
    "RateLimited",
    "TransientError",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
