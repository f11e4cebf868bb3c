"""Cekura calls as HTTP client spans: the worker's `CekuraClient` when tracing is on (`Runtime.cekura`).

Each call the client makes for a step becomes a span under the step's job span (the scope `spans.enter` set), named and
described by OpenTelemetry's HTTP client conventions: `{method} {route}` (the path, its ids replaced), kind CLIENT,
with `http.request.method`, `url.full`, `server.address`, `server.port`, `http.response.status_code` (whenever an
answer came), and `error.type` plus an error status for a failure. Nothing of the request's headers
or body is recorded: the API key and a job's provider secrets travel there, and the one text that could echo them,
a failure's message, is masked with the job's secrets first (as the client's errors already are). Progress calls
add the job's poll number and Cekura's status word; past the first `DEFAULT_TRACED_POLLS` polls only a poll that
ends the job, asks a question or fails gets a span (the job's end sums the others up).

A subclass because the client's public methods don't expose what a span needs (the status code of a 2xx answer,
the path a call was sent to). It makes each call with `CekuraClient`'s own two halves: `_exchange` sends the request
and reads the answer whole (handing the call's `_Call` the status as soon as the head is read, so an answer whose body
then fails still names it), and `_answer` says what the answer means; a progress call takes `_progress_target` and
`status_word` as `CekuraClient.progress` does. `tests/tracing/test_context.py` pins them. A job whose spans are not
recorded goes through the same halves with one `ContextVar` read more.
"""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_FULL
from opentelemetry.trace import SpanKind, Status, StatusCode

from actors.kinds import JobKind, Params
from config.settings import Settings
from worker.cekura.client import CekuraClient, status_word
from worker.errors import CekuraError
from worker.redact import redact
from worker.tracing import state
from worker.tracing.provider import UNSET
from worker.tracing.spans import DEFAULT_DESCRIPTION_CHARS, Scope

_scope = state.scope

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
    error: Exception | None = None


class TracedCekuraClient(CekuraClient):
    """`CekuraClient`, with a span for every call made for a job whose spans are recorded."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        parts = urlsplit(settings.cekura_api_url)
        self._base_url = settings.cekura_api_url
        # The conventions want the port only when it is not the scheme's own (and each attribute has its cost).
        self._server: dict[str, Any] = {SERVER_ADDRESS: parts.hostname or ""}
        if parts.port is not None and parts.port != (443 if parts.scheme == "https" else 80):
            self._server[SERVER_PORT] = parts.port

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
        scope = _scope.get()
        if scope is None or not scope.sampled or state.current is None:  # (tracing stopped: a test's teardown)
            response, body = self._exchange(method, path, json_body, query, time_left_s)
            return self._answer(method, path, response, body, secrets, allow_empty)
        call = _Call(method, path, query, secrets, time.time_ns())
        try:
            response, body = self._exchange(method, path, json_body, query, time_left_s, call)
            return self._answer(method, path, response, body, secrets, allow_empty)
        except Exception as exc:  # (anything but a CekuraError is a bug of the client's: the span says which)
            call.error = exc
            raise
        finally:
            call.end_ns = time.time_ns()
            self._emit(scope, call)

    def progress(
        self, kind: JobKind, params: Params, progress_id: str, *, time_left_s: float = math.inf
    ) -> tuple[str, dict[str, Any]]:
        """A progress call whose span waits for its answer: it carries the status word, and a poll past the traced
        ones that neither ends the job nor asks nor fails gets none."""
        scope = _scope.get()
        if scope is None or not scope.sampled or state.current is None:
            return CekuraClient.progress(self, kind, params, progress_id, time_left_s=time_left_s)
        path, query, secrets = self._progress_target(kind, params, progress_id)
        call = _Call("GET", path, query, secrets, time.time_ns())
        try:
            response, body = self._exchange("GET", path, None, query, time_left_s, call)
            data = self._answer("GET", path, response, body, secrets, False)
            status = status_word(kind, path, data)
        except Exception as exc:
            call.error = exc
            call.end_ns = time.time_ns()
            self._emit_progress(scope, call)
            raise
        call.end_ns = time.time_ns()
        if scope.poll <= state.DEFAULT_TRACED_POLLS or kind.outcome(status) is not None or status in kind.waiting:
            self._emit_progress(scope, call, status)
        return status, data

    def _emit_progress(self, scope: Scope, call: _Call, status: str = "") -> None:
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
        status = UNSET
        if isinstance(error, CekuraError):
            code = error.status_code  # an HTTP error's status, else the kind of failure (a 2xx that can't be used)
            attributes[ERROR_TYPE] = str(code) if code and code >= 400 else type(error).__name__
            status = Status(StatusCode.ERROR, redact(str(error), call.secrets or ())[:DEFAULT_DESCRIPTION_CHARS])
        elif error is not None:  # not one of the client's own errors, whose texts are masked: its type alone
            attributes[ERROR_TYPE] = type(error).__qualname__
            status = Status(StatusCode.ERROR, type(error).__qualname__)
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
