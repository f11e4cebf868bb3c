"""The Cekura HTTP client: one keep-alive connection per worker thread, errors sorted into permanent and transient.

It speaks through httpcore, the connection layer httpx is built on, rather than `httpx.Client`: profiled on a
poll, `httpx.Client.get` spent about 1.1 ms of CPU per request against 0.38 ms for the same request through
httpcore (and every poll is one request), while httpcore still gives keep-alive connections, TLS with
verification, and connect/read/write timeouts.

Each worker thread keeps its own `httpcore.HTTPConnection` instead of sharing a `ConnectionPool`: a worker
thread makes one call at a time, so a pool only adds a lock every thread contends for, and on every response
it checked each idle connection's socket (a `poll()` per connection per request). Profiled at saturation,
that was most of the process's `poll()` calls and a fifth of its lock waits.

Requests go only to `CEKURA_API_URL`: paths come from the job kind's declaration with integer ids, the
progress id travels percent-encoded in the query, and no request field can set a header. Answers larger than
`CEKURA_MAX_RESPONSE_BYTES` are refused, and so is any answer `json.loads` would choke on or decode into values
nothing downstream can store (deep nesting, NaN, huge integers, invalid UTF-8): they become `PermanentError`.

A call has a total time limit as well as httpcore's per-operation timeouts: `CEKURA_HTTP_TIMEOUT_S` bounds each
connect, read and write, so an answer trickling in a byte at a time would outlive the job's lease and the
reconciler would send the call again while the first is in flight. `_DeadlineBackend` wraps httpcore's
`SyncBackend` through its public `NetworkBackend` / `NetworkStream` interface and gives every socket operation
`min(timeout, time left)` of a per-thread deadline that `_call` sets (`Settings.cekura_call_limit_s`, half the
lease); past it, the operation raises httpcore's own timeout. It costs one `time.monotonic()` per socket operation.

Errors keep secrets out: httpcore's `LocalProtocolError` quotes the request header it refused (the API key among
them), so an error that is not a network error is reported by its type only; network errors pass through
`redact()`.
"""

from __future__ import annotations

import json
import math
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpcore

from actors.kinds import JobKind, Params
from config.settings import Settings
from worker.cekura import lookup
from worker.cekura.backoff import parse_retry_after
from worker.cekura.decode import DEFAULT_ERROR_EXCERPT, decode
from worker.cekura.transport import _Deadline, _DeadlineBackend
from worker.errors import CekuraError, ConfigError, PermanentError, RateLimited, TransientError
from worker.redact import redact

#: Retry-After assumed for a 429 that carries none.
DEFAULT_RETRY_AFTER_S = 5.0

#: Seconds an idle keep-alive connection is kept before a new one is opened.
DEFAULT_KEEPALIVE_EXPIRY_S = 30.0

_SUCCESS = frozenset({200, 201, 202})


class Answered(Protocol):
    """What takes the status of a call's answer as soon as its head is read (`_exchange`): the traced client's call
    span names it even when the body then fails."""

    status: int


@dataclass(frozen=True, slots=True)
class Started:
    """What a start call returned."""

    progress_id: str
    session_id: int | None = None


class CekuraClient:
    """Calls the Cekura API for a job kind and returns parsed JSON, raising `CekuraError` subclasses."""

    def __init__(self, settings: Settings) -> None:
        if settings.cekura_api_key is None:
            raise ConfigError("CEKURA_API_KEY is not set: the worker needs it to call the Cekura API")
        self.settings = settings
        self.base = settings.cekura_api_url.encode()
        self.max_bytes = settings.cekura_max_response_bytes
        key = settings.cekura_api_key.get_secret_value().encode()
        host = urlsplit(settings.cekura_api_url).netloc.encode()
        self._get_headers = [(b"Host", host), (b"X-CEKURA-API-KEY", key), (b"Accept", b"application/json")]
        self._post_headers = [*self._get_headers, (b"Content-Type", b"application/json")]
        timeout = settings.cekura_http_timeout_s
        self._extensions = {"timeout": {"connect": timeout, "read": timeout, "write": timeout}}
        self._origin = httpcore.URL(self.base).origin
        #: Path of CEKURA_API_URL, if any, before each operation's path; URLs are built from parts, unparsed.
        self._prefix = urlsplit(settings.cekura_api_url).path.rstrip("/").encode()
        self._ssl_context = ssl.create_default_context(cafile=settings.cekura_ca_bundle)
        self._call_limit_s = settings.cekura_call_limit_s
        self._deadline = _Deadline()
        self._backend = _DeadlineBackend(self._deadline)
        self._local = threading.local()
        self._connections: set[httpcore.HTTPConnection] = set()
        self._connections_lock = threading.Lock()

    def close(self) -> None:
        """Close every thread's connection (a thread that calls again afterwards opens a new one)."""
        with self._connections_lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            connection.close()

    def _connection(self) -> httpcore.HTTPConnection:
        """This thread's connection: kept alive between calls, replaced once closed, expired or dropped."""
        connection: httpcore.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None and not (connection.has_expired() or connection.is_closed()):
            return connection
        fresh = httpcore.HTTPConnection(
            self._origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=DEFAULT_KEEPALIVE_EXPIRY_S,
            network_backend=self._backend,
        )
        with self._connections_lock:
            if connection is not None:
                self._connections.discard(connection)
            self._connections.add(fresh)
        if connection is not None:
            connection.close()
        self._local.connection = fresh
        return fresh

    def _discard(self) -> None:
        """Close this thread's connection after a failed call: whatever state it was left in, the next call opens
        a new one."""
        connection: httpcore.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            return
        self._local.connection = None
        with self._connections_lock:
            self._connections.discard(connection)
        connection.close()

    def start(self, kind: JobKind, params: Params, *, tag: str = "", time_left_s: float = math.inf) -> Started:
        """Start the operation; a kind with a `tag_field` gets the job's `tag` in it (`worker.cekura.lookup`)."""
        path, _ = kind.paths(params)
        body = kind.start_body(params)
        if kind.tag_field and tag and body is not None:
            body = {**body, kind.tag_field: lookup.with_tag(body.get(kind.tag_field), tag)}
        secrets = kind.secret_values(kind.secrets(params))
        if not kind.repeatable_start:
            # A kept-alive connection the server closed while idle fails only once the request is written, and
            # then nobody can tell whether Cekura read it: a start that must not be repeated takes a new one.
            self._discard()
        data = self._call("POST", path, json_body=body, secrets=secrets, time_left_s=time_left_s)
        progress_id = data.get(kind.progress_id_field)
        if isinstance(progress_id, int) and not isinstance(progress_id, bool) and progress_id >= 0:
            progress_id = str(progress_id)
        if not isinstance(progress_id, str) or not progress_id or len(progress_id) > 512:
            raise PermanentError(f"invalid response from {path}: no usable {kind.progress_id_field}", status_code=200)
        if redact(progress_id, secrets) != progress_id:  # the id is stored, logged and published: never a secret
            raise PermanentError(
                f"invalid response from {path}: {kind.progress_id_field} quotes a secret", status_code=200
            )
        if kind.polls_by_path and not (progress_id.isascii() and progress_id.isdigit()):
            raise PermanentError(
                f"invalid response from {path}: {kind.progress_id_field} is not an integer", status_code=200
            )
        session_id = data.get("session_id")
        if session_id is not None and (not isinstance(session_id, int) or isinstance(session_id, bool)):
            raise PermanentError(f"invalid response from {path}: session_id is not an integer", status_code=200)
        return Started(progress_id, session_id)

    def progress(
        self, kind: JobKind, params: Params, progress_id: str, *, time_left_s: float = math.inf
    ) -> tuple[str, dict[str, Any]]:
        """The status word (by the kind's rule) and the whole answer of one progress poll."""
        path, query, secrets = self._progress_target(kind, params, progress_id)
        data = self._call("GET", path, query=query, secrets=secrets, time_left_s=time_left_s)
        return status_word(kind, path, data), data

    @staticmethod
    def _progress_target(kind: JobKind, params: Params, progress_id: str) -> tuple[str, bytes | None, tuple[str, ...]]:
        """A progress call's path, query and the job's secrets."""
        _, path = kind.paths(params, progress_id)
        query = None if kind.polls_by_path else b"progress_id=" + quote(progress_id, safe="").encode()
        return path, query, kind.secret_values(kind.secrets(params))

    def find(self, kind: JobKind, tag: str, *, time_left_s: float = math.inf) -> dict[str, Any]:
        """The kind's results list filtered by a job's tag (one page): see `worker.cekura.lookup`."""
        assert kind.lookup_path is not None
        query = f"search={quote(tag, safe='')}&page_size={lookup.DEFAULT_PAGE_SIZE}".encode()
        return self._call("GET", kind.lookup_path, query=query, secrets=(), time_left_s=time_left_s)

    def answer(
        self,
        kind: JobKind,
        progress_id: str,
        text: str,
        *,
        secrets: tuple[str, ...] = (),
        time_left_s: float = math.inf,
    ) -> None:
        """Send a person's answer to an operation that waits for one; `secrets`: the job's own, masked in errors.
        An answer its kind can't send (recorded before answers were checked in full) is a `PermanentError`."""
        from worker.errors import InvalidRequest

        if kind.answer_path is None:
            raise PermanentError(f"{kind.name} takes no answers")
        try:  # built and checked as when the answer was accepted
            body = kind.answer_request(progress_id, text)
        except InvalidRequest as exc:
            raise PermanentError(f"the recorded answer can't be sent to Cekura: {exc}") from None
        self._call("POST", kind.answer_path, json_body=body, secrets=secrets, time_left_s=time_left_s)

    def cancel(
        self, kind: JobKind, session_id: int | None, progress_id: str = "", *, secrets: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        """Stop an operation at Cekura. A cancel usually runs after its job ended and its secrets were dropped:
        with `secrets` unknown (None), an error quotes nothing of Cekura's answer, only its status."""
        if kind.cancel_path is None:
            raise PermanentError(f"{kind.name} has no cancel operation")
        if "{progress_id}" in kind.cancel_path:
            if not (progress_id.isascii() and progress_id.isdigit()):
                raise PermanentError(f"{kind.name}: no progress id to cancel")
            path = kind.cancel_path.format(progress_id=int(progress_id))
        else:
            path = kind.cancel_path
        body = kind.cancel_body(session_id, progress_id)
        if body is not None and any(value is None for value in body.values()):
            raise PermanentError(f"{kind.name}: nothing to cancel it by (no session or progress id)")
        return self._call("POST", path, json_body=body, secrets=secrets, allow_empty=True)

    def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        query: bytes | None = None,
        secrets: tuple[str, ...] | None,
        time_left_s: float = math.inf,
        allow_empty: bool = False,
    ) -> dict[str, Any]:
        """One call, over within `time_left_s` (the job's deadline) and half the lease, whichever is first.

        `secrets` are the job's own (a provider key), masked in any error text the call produces, before any cut;
        every call names them (none: `()`), and a call that can't know them (`None`) quotes nothing of an error
        answer's body."""
        response, body = self._exchange(method, path, json_body, query, time_left_s)
        return self._answer(method, path, response, body, secrets, allow_empty)

    def _exchange(
        self,
        method: str,
        path: str,
        json_body: dict[str, Any] | None,
        query: bytes | None,
        time_left_s: float,
        answered: Answered | None = None,
    ) -> tuple[httpcore.Response, bytes]:
        """Send one request and read its answer whole: the answer (closed) and its body. A request that could not be
        sent or answered raises `TransientError` or `PermanentError`, as does a body over the size limit.
        `answered` gets the answer's status as soon as its head is read, before its body (whose read may fail)."""
        origin = self._origin
        target = self._prefix + path.encode() + (b"?" + query if query else b"")
        url = httpcore.URL(scheme=origin.scheme, host=origin.host, port=origin.port, target=target)
        content = b"" if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        if json_body is not None:
            headers = [*self._post_headers, (b"Content-Length", str(len(content)).encode())]
        elif method == "POST":  # a start call that carries no body at all
            headers = [*self._get_headers, (b"Content-Length", b"0")]
        else:
            headers = self._get_headers
        request = httpcore.Request(method, url, headers=headers, content=content, extensions=self._extensions)
        self._deadline.at = time.monotonic() + min(self._call_limit_s, max(0.0, time_left_s))
        try:
            response = self._connection().handle_request(request)
            if answered is not None:
                answered.status = response.status
            try:
                body = self._read(response, path)
            finally:
                response.close()
        except httpcore.TimeoutException as exc:
            self._discard()
            unsent = isinstance(exc, httpcore.ConnectTimeout | httpcore.PoolTimeout)
            raise TransientError(f"{method} {path}: timed out ({type(exc).__name__})", maybe_sent=not unsent) from None
        except (httpcore.NetworkError, httpcore.RemoteProtocolError, httpcore.ConnectionNotAvailable) as exc:
            self._discard()
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__  # e.g. a refused certificate
            # Only a connection that was never made certainly carried nothing to Cekura.
            unsent = isinstance(exc, httpcore.ConnectError | httpcore.ConnectionNotAvailable)
            raise TransientError(
                f"{method} {path}: connection failed ({redact(detail)})", maybe_sent=not unsent
            ) from None
        except CekuraError:
            self._discard()
            raise
        except Exception as exc:
            # LocalProtocolError quotes the header value it refused, and any other surprise may quote the request
            # too: name the type only. A request that could not be sent will not be sent by trying again.
            self._discard()
            raise PermanentError(f"{method} {path}: request could not be sent ({type(exc).__name__})") from None
        return response, body

    def _answer(
        self,
        method: str,
        path: str,
        response: httpcore.Response,
        body: bytes,
        secrets: tuple[str, ...] | None,
        allow_empty: bool,
    ) -> dict[str, Any]:
        """What an answer says: its JSON, or the `CekuraError` its status means."""
        status = response.status
        if status in _SUCCESS:
            if allow_empty and not body.strip():
                return {}  # e.g. end_calls: "No response body"
            return decode(body, path, status)
        retry_after = _header(response, b"retry-after")
        if status == 429 and retry_after is not None and not retry_after.strip().isdigit():
            retry_after = _relative_to_server_date(retry_after, _header(response, b"date"))
        raise self._error(method, path, status, body, retry_after, secrets)

    def _read(self, response: httpcore.Response, path: str) -> bytes:
        declared = _header(response, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise PermanentError(
                f"response from {path} is {declared} bytes, over the {self.max_bytes}-byte limit",
                status_code=response.status,
            )
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise PermanentError(
                    f"response from {path} is over the {self.max_bytes}-byte limit", status_code=response.status
                )
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _error(
        method: str, path: str, status: int, body: bytes, retry_after: str | None, secrets: tuple[str, ...] | None
    ) -> CekuraError:
        if secrets is None:
            excerpt = f"({len(body)} bytes not quoted)"
        else:
            # Masked before it is cut: a secret straddling the cut would leave a prefix no form of it matches.
            excerpt = redact(body.decode("utf-8", "replace"), secrets)[:DEFAULT_ERROR_EXCERPT].strip()
        where = f"{method} {path} answered HTTP {status}"
        if status == 429:
            wait = parse_retry_after(retry_after)
            return RateLimited(f"{where} (rate limited)", retry_after_s=DEFAULT_RETRY_AFTER_S if wait is None else wait)
        if status >= 500:
            return TransientError(f"{where}", status_code=status)
        refused = 400 <= status < 500  # Cekura said no: the request did nothing there
        if status in (404, 405):
            return PermanentError(
                f"{where}: operation not available or resource not found: {excerpt}", status_code=status, refused=True
            )
        if status == 401:
            return PermanentError(f"{where}: the Cekura API key was refused", status_code=status, refused=True)
        if status == 403:
            return PermanentError(f"{where}: forbidden: {excerpt}", status_code=status, refused=True)
        return PermanentError(f"{where}: {excerpt}", status_code=status, refused=refused)


def status_word(kind: JobKind, path: str, data: dict[str, Any]) -> str:
    """A progress answer's status word, by its kind's rule (an answer without one is a `PermanentError`)."""
    status = kind.status_of(data)
    if status is None:
        raise PermanentError(f"invalid response from {path}: no status")
    return status


def _relative_to_server_date(retry_after: str, date: str | None) -> str:
    """An HTTP-date `Retry-After` as delta-seconds measured against the answer's own `Date` header, so a host
    clock that disagrees with Cekura's changes nothing (RFC 9110, 10.2.3); unchanged when there is no usable Date."""
    try:
        server_now = parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError, IndexError, OverflowError):  # (a year past datetime's: OverflowError)
        server_now = None
    if server_now is None:
        return retry_after
    wait = parse_retry_after(retry_after, now=server_now if server_now.tzinfo else server_now.replace(tzinfo=UTC))
    return retry_after if wait is None else str(math.ceil(wait))


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None
