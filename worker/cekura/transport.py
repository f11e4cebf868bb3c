"""A total time limit for each Cekura call, enforced at every socket operation.

httpcore's timeouts bound each connect, read and write, not the call: an answer that trickles in a byte at a time
never trips a read timeout. This network backend wraps httpcore's own (a public interface, `network_backend=` of
`httpcore.HTTPConnection`) and gives every operation at most the time left before the calling thread's deadline,
which `CekuraClient` sets per call (half of `CEKURA_LEASE_S`), so a call always ends before its claim does.
"""

from __future__ import annotations

import math
import ssl
import threading
import time
from collections.abc import Iterable
from typing import Any

import httpcore

#: Bytes handed to the socket per write, each with the time left before the call's deadline.
DEFAULT_WRITE_CHUNK_BYTES = 16_384


class _Deadline(threading.local):
    """When the current thread's Cekura call must be over, as a `time.monotonic()` value (none outside a call)."""

    at = math.inf


def _within(deadline: _Deadline, timeout: float | None, expired: type[Exception]) -> float:
    """The timeout for one socket operation: `timeout`, cut to the time left before the deadline.

    Raises `expired` (one of httpcore's timeouts) once the deadline has passed, as the operation itself would.
    """
    left = deadline.at - time.monotonic()
    if left <= 0:
        raise expired("the call's total time limit has passed")
    return left if timeout is None or left < timeout else timeout


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation ends by the call's deadline, whatever its own timeout."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _within(self._deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # SyncStream gives each send() of a partial write the whole timeout again; written in chunks, each chunk
        # gets only the time left. (A request under one chunk, the usual case, is one write of the same object.)
        for start in range(0, len(buffer), DEFAULT_WRITE_CHUNK_BYTES):
            chunk = buffer[start : start + DEFAULT_WRITE_CHUNK_BYTES]
            self._stream.write(chunk, _within(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        timeout = _within(self._deadline, timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's `SyncBackend`, with streams that keep to the deadline `CekuraClient._call` sets for its thread."""

    def __init__(self, deadline: _Deadline) -> None:
        self._backend = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _within(self._deadline, timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.NetworkStream:
        timeout = _within(self._deadline, timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options), self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)
