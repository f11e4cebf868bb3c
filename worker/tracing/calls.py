"""Cekura calls as HTTP client spans: the worker's `CekuraClient` when tracing is on (`Runtime.cekura`).

Each call the client makes for a step becomes a span under the step's job span (`spans.current()`), named and
described by OpenTelemetry's HTTP client conventions: `{method} {route}` (the path, its ids replaced), kind CLIENT,
with `http.request.method`, `url.full`, `server.address`, `server.port`, `http.response.status_code` (whenever an
answer came), and `error.type` plus an error status for a failure. Nothing of the request's headers
or body is recorded: the API key and a job's provider secrets travel there, and the one text that could echo them,
a failure's message, is masked with the job's secrets first (as the client's errors already are). Progress calls
add the job's poll number and Cekura's status word; past the first `DEFAULT_TRACED_POLLS` polls only a poll that
ends the job, asks a question or fails gets a span (the job's end sums the others up).

A subclass because the client's public methods don't expose what a span needs (the status code of a 2xx answer,
the path a call was sent to). It relies on two of `CekuraClient`'s own methods, both pinned by
`tests/tracing/test_calls.py`: `_call(method, path, *, json_body, query, secrets, time_left_s, allow_empty)`, which
every call goes through, and `_read(response, path)`, which reads every answer.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_FULL
from opentelemetry.trace import SpanKind, Status, StatusCode

from actors.kinds import JobKind, Params
from config.settings import Settings
from worker.cekura.client import CekuraClient
from worker.errors import CekuraError
from worker.redact import redact
from worker.tracing import state
from worker.tracing.provider import UNSET
from worker.tracing.spans import DEFAULT_DESCRIPTION_CHARS, Scope, current

#: A path segment that is an id (an agent, a result, a run): `{id}` in a span's name, as in a URL template.
_ID_SEGMENT = re.compile(r"/-?[0-9]+(?=/|$)")


#: The most characters of a call's URL a span carries (a Cekura URL is under 100; a hostile progress id is not).
DEFAULT_URL_CHARS = 256


@functools.lru_cache(maxsize=256)
def _template(path: str) -> str:
    """The route a call took, its ids replaced: `/test_framework/v1/results/{id}/`."""
    return _ID_SEGMENT.sub("/{id}", path)


@dataclass(slots=True)
class _Call:
    method: str
    path: str
    query: bytes | None
    secrets: tuple[str, ...] | None
    start_ns: int
    end_ns: int = 0
    status: int = 0
    error: CekuraError | None = None


class TracedCekuraClient(CekuraClient):
    """`CekuraClient`, with a span for every call made for a job that has trace context."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        parts = urlsplit(settings.cekura_api_url)
        self._base_url = settings.cekura_api_url
        # The conventions want the port only when it is not the scheme's own (and each attribute has its cost).
        self._server: dict[str, Any] = {SERVER_ADDRESS: parts.hostname or ""}
        if parts.port is not None and parts.port != (443 if parts.scheme == "https" else 80):
            self._server[SERVER_PORT] = parts.port
        self._trace = threading.local()

    def _read(self, response: httpcore.Response, path: str) -> bytes:
        call: _Call | None = getattr(self._trace, "call", None)
        if call is not None:
            call.status = response.status
        return super()._read(response, path)

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
        scope = current()
        if scope is None or not scope.sampled or state.current is None:  # (tracing stopped: a test's teardown)
            self._trace.call = None
            return super()._call(
                method, path, json_body=json_body, query=query, secrets=secrets, time_left_s=time_left_s,
                allow_empty=allow_empty,
            )  # fmt: skip
        call = self._trace.call = _Call(method, path, query, secrets, time.time_ns())
        try:
            return super()._call(
                method, path, json_body=json_body, query=query, secrets=secrets, time_left_s=time_left_s,
                allow_empty=allow_empty,
            )  # fmt: skip
        except CekuraError as exc:
            call.error = exc
            raise
        finally:
            call.end_ns = time.time_ns()
            if not getattr(self._trace, "deferred", False):
                self._emit(scope, call)

    def progress(
        self, kind: JobKind, params: Params, progress_id: str, *, time_left_s: float = math.inf
    ) -> tuple[str, dict[str, Any]]:
        """A progress call whose span waits for its answer: it carries the status word, and a poll past the traced
        ones that neither ends the job nor asks nor fails gets none."""
        scope = current()
        if scope is None or not scope.sampled or state.current is None:
            return super().progress(kind, params, progress_id, time_left_s=time_left_s)
        self._trace.deferred = True
        self._trace.call = None
        try:
            status, data = super().progress(kind, params, progress_id, time_left_s=time_left_s)
        except CekuraError as exc:
            self._emit_progress(scope, error=exc)
            raise
        finally:
            self._trace.deferred = False
        if scope.poll <= state.DEFAULT_TRACED_POLLS or kind.outcome(status) is not None or status in kind.waiting:
            self._emit_progress(scope, status=status)
        return status, data

    def _emit_progress(self, scope: Scope, *, status: str = "", error: CekuraError | None = None) -> None:
        call: _Call | None = self._trace.call
        if call is None:
            return
        if error is not None and call.error is None:  # the answer came but could not be used (no status, say)
            call.error = error
        extra: dict[str, Any] = {"cekura.poll.number": scope.poll}
        if status:
            extra["cekura.status"] = redact(status, call.secrets or ())[:DEFAULT_DESCRIPTION_CHARS]
        self._emit(scope, call, extra)

    def _emit(self, scope: Scope, call: _Call, extra: dict[str, Any] | None = None) -> None:
        tracing = state.current
        if tracing is None:
            return
        url = self._base_url + call.path + ("?" + call.query.decode("ascii", "replace") if call.query else "")
        # The conventions' required attributes, and the step's own: every attribute costs a few us to encode and
        # export, so the route is in the span's name rather than in `url.template` too, and the job's id and kind
        # are on the job span, the parent.
        attributes: dict[str, Any] = {
            HTTP_REQUEST_METHOD: call.method,
            URL_FULL: redact(url, call.secrets or ())[:DEFAULT_URL_CHARS],
            **self._server,
            **(extra or {}),
        }
        if call.status:
            attributes[HTTP_RESPONSE_STATUS_CODE] = call.status
        error = call.error
        if error is not None:
            code = error.status_code  # an HTTP error's status, else the kind of failure (a 2xx that can't be used)
            attributes[ERROR_TYPE] = str(code) if code and code >= 400 else type(error).__name__
        status = UNSET
        if error is not None:
            status = Status(StatusCode.ERROR, redact(str(error), call.secrets or ())[:DEFAULT_DESCRIPTION_CHARS])
        tracing.record(
            f"{call.method} {_template(call.path)}",
            tracing.child(scope.parent),
            scope.parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_ns=call.start_ns,
            end_ns=call.end_ns,
            status=status,
        )
