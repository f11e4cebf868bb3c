"""The Cekura HTTP client: one keep-alive `httpx.Client` per process, errors sorted into permanent and transient.

Requests go only to `CEKURA_API_URL`: paths come from the job kind's declaration with integer ids, the
progress id travels as an encoded query parameter, and no request field can set a header. Answers larger than
`CEKURA_MAX_RESPONSE_BYTES` are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from actors.kinds import JobKind, Params
from config.settings import Settings
from worker.backoff import parse_retry_after
from worker.errors import CekuraError, PermanentError, RateLimited, TransientError

#: How much of an error body is quoted in a job's `error` field.
DEFAULT_ERROR_EXCERPT = 300

#: Retry-After assumed for a 429 that carries none.
DEFAULT_RETRY_AFTER_S = 5.0

_SUCCESS = frozenset({200, 201, 202})


@dataclass(frozen=True, slots=True)
class Started:
    """What a start call returned."""

    progress_id: str
    session_id: int | None = None


class CekuraClient:
    """Calls the Cekura API for a job kind and returns parsed JSON, raising `CekuraError` subclasses."""

    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None) -> None:
        if settings.cekura_api_key is None:
            from worker.errors import ConfigError

            raise ConfigError("CEKURA_API_KEY is not set: the worker needs it to call the Cekura API")
        self.settings = settings
        self.max_bytes = settings.cekura_max_response_bytes
        self.http = httpx.Client(
            base_url=settings.cekura_api_url,
            headers={"X-CEKURA-API-KEY": settings.cekura_api_key.get_secret_value(), "Accept": "application/json"},
            timeout=httpx.Timeout(settings.cekura_http_timeout_s),
            verify=settings.cekura_ca_bundle or True,
            follow_redirects=False,
            limits=httpx.Limits(
                max_connections=settings.cekura_threads * 2, max_keepalive_connections=settings.cekura_threads * 2
            ),
            transport=transport,
            trust_env=False,
        )

    def close(self) -> None:
        self.http.close()

    def start(self, kind: JobKind, params: Params) -> Started:
        path, _ = kind.paths(params)
        body = kind.start_body(params)
        data = self._call("POST", path, json_body=body)
        progress_id = data.get("progress_id")
        if not isinstance(progress_id, str) or not progress_id or len(progress_id) > 512:
            raise PermanentError(f"invalid response from {path}: no usable progress_id")
        session_id = data.get("session_id")
        if session_id is not None and (not isinstance(session_id, int) or isinstance(session_id, bool)):
            raise PermanentError(f"invalid response from {path}: session_id is not an integer")
        return Started(progress_id, session_id)

    def progress(self, kind: JobKind, params: Params, progress_id: str) -> dict[str, Any]:
        _, path = kind.paths(params)
        data = self._call("GET", path, query={"progress_id": progress_id})
        if not isinstance(data.get("status"), str):
            raise PermanentError(f"invalid response from {path}: no status")
        return data

    def cancel(self, kind: JobKind, session_id: int) -> dict[str, Any]:
        if kind.cancel_path is None:
            raise PermanentError(f"{kind.name} has no cancel operation")
        return self._call("POST", kind.cancel_path, json_body={"session_id": session_id})

    def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        content = None if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            request = self.http.build_request(method, path, params=query, content=content, headers=headers)
            response = self.http.send(request, stream=True)
            try:
                body = self._read(response, path)
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            raise TransientError(f"{method} {path}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TransientError(f"{method} {path}: connection failed ({type(exc).__name__})") from None
        status = response.status_code
        if status in _SUCCESS:
            try:
                data = json.loads(body)
            except ValueError:
                raise PermanentError(f"invalid response from {path}: not JSON", status_code=status) from None
            if not isinstance(data, dict):
                raise PermanentError(f"invalid response from {path}: not a JSON object", status_code=status)
            return data
        raise self._error(method, path, status, body, response.headers.get("Retry-After"))

    def _read(self, response: httpx.Response, path: str) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise PermanentError(f"response from {path} is {declared} bytes, over the {self.max_bytes}-byte limit")
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise PermanentError(f"response from {path} is over the {self.max_bytes}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _error(method: str, path: str, status: int, body: bytes, retry_after: str | None) -> CekuraError:
        excerpt = body[:DEFAULT_ERROR_EXCERPT].decode("utf-8", "replace").strip()
        where = f"{method} {path} answered HTTP {status}"
        if status == 429:
            wait = parse_retry_after(retry_after)
            return RateLimited(f"{where} (rate limited)", retry_after_s=DEFAULT_RETRY_AFTER_S if wait is None else wait)
        if status >= 500:
            return TransientError(f"{where}", status_code=status)
        if status in (404, 405):
            return PermanentError(
                f"{where}: operation not available or resource not found: {excerpt}", status_code=status
            )
        if status == 401:
            return PermanentError(f"{where}: the Cekura API key was refused", status_code=status)
        if status == 403:
            return PermanentError(f"{where}: forbidden: {excerpt}", status_code=status)
        return PermanentError(f"{where}: {excerpt}", status_code=status)
