"""The request stream: any producer XADDs `request=<json>` to `CEKURA_REQUESTS_STREAM`; every worker process
reads it through one consumer group, so each entry is handled once across the fleet.

An entry is acknowledged (and deleted, so the stream doesn't grow) only after its job is recorded or its
`rejected` event published. Entries left pending by a consumer that died are claimed with XAUTOCLAIM after
`DEFAULT_CLAIM_IDLE_MS` and handled by a live one.

Redis errors split two ways. One that says something about the server (a lost connection, a timeout, a failover,
a full or busy server) stops the batch: nothing is acknowledged and the loop backs off and reads again. One that
says something about the entry (an error reply such as WRONGTYPE or a script error, which comes back the same
every time) leaves only that entry pending and the batch goes on; once the entry has been delivered
`DEFAULT_MAX_ENTRY_TRIES` times it is rejected, so one poison entry can't hold up the entries behind it.

Nothing here parses a request over `CEKURA_REQUEST_MAX_BYTES`, not even to name it in a rejection: a 30 MB entry
parsed as JSON takes most of a gigabyte. Nor are such entries read whole: batches (new entries, and claimed ones)
come through the `read_requests` script, which sends a `request` field only when it is within the limit (else its
length) and other fields by name only, so a batch costs at most `DEFAULT_BATCH` times the limit. The one exception
is the wait for new entries when there are none: it is a blocking XREADGROUP (a script can't block, and Redis has
no blocking read that returns ids only), so it reads its one entry whole, with COUNT 1: the bound is one entry
over the limit at a time (at most Redis's largest value, `proto-max-bulk-len`), whatever a burst holds.

An entry is one field, `request`: one with other fields is rejected, naming them, rather than trimmed (a producer
that put its `job_id` in a field of its own would otherwise get a job under an id it never hears of).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
from typing import Any

import redis
import structlog
from redis.exceptions import ClusterDownError, NoPermissionError, OutOfMemoryError, ReadOnlyError, TryAgainError

from actors.kinds import KINDS, JobKind
from worker.errors import InvalidRequest
from worker.intake import requests, submission
from worker.ops import metrics
from worker.redact import redact
from worker.runtime.app import Runtime
from worker.store import scripts
from worker.store.jobs import NotReplicated, as_text

log = structlog.get_logger(__name__)

#: How long an entry may stay pending with a consumer before another consumer takes it over.
DEFAULT_CLAIM_IDLE_MS = 10_000

#: How long one XREADGROUP blocks waiting for entries.
DEFAULT_BLOCK_MS = 1000

#: Entries read per call.
DEFAULT_BATCH = 100

#: A consumer with nothing pending and idle this long (a worker process that is gone) leaves the group.
DEFAULT_FORGET_IDLE_MS = 3_600_000

#: How many of an entry's other field names a rejection may quote, and how long each may be (longer ones are
#: counted, not shown); read_requests.lua sends no more.
DEFAULT_MAX_FIELD_NAMES = 10
DEFAULT_MAX_FIELD_NAME_CHARS = 64

#: Deliveries of an entry whose handling fails with a Redis error reply each time, after which it is rejected.
DEFAULT_MAX_ENTRY_TRIES = 3

#: The longest wait between attempts after the loop failed, in seconds.
DEFAULT_MAX_BACKOFF_S = 30.0

#: How much of a Redis error's text a rejection quotes.
DEFAULT_ERROR_QUOTE_CHARS = 300

#: Error replies about the server, not the entry (they pass): the batch is retried like after a lost connection.
_PASSING_REPLIES = frozenset({"BUSY", "LOADING", "MASTERDOWN", "NOGROUP", "NOREPLICAS", "TRYAGAIN"})


def consumer_name() -> str:
    """This process's consumer name in the group: host and pid, unique in the fleet."""
    return f"{socket.gethostname()}:{os.getpid()}"


def about_the_server(exc: redis.RedisError) -> bool:
    """Whether a Redis error may pass on its own (connection, timeout, failover, memory, permissions, a busy or
    loading server, a vanished group) rather than come back every time this entry is handled."""
    passing = (
        redis.ConnectionError,
        redis.TimeoutError,
        ReadOnlyError,
        OutOfMemoryError,
        NotReplicated,
        TryAgainError,
        ClusterDownError,
        NoPermissionError,
    )
    return isinstance(exc, passing) or str(exc).split(" ", 1)[0] in _PASSING_REPLIES


class Intake(threading.Thread):
    """Reads the request stream in a consumer group and turns entries into jobs, cancellations or rejections."""

    def __init__(self, rt: Runtime, *, name: str | None = None, claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS) -> None:
        super().__init__(name="cekura-intake", daemon=True)
        self.rt = rt
        self.stream = rt.settings.cekura_requests_stream
        self.group = rt.settings.cekura_intake_group
        self.consumer = name or consumer_name()
        self.claim_idle_ms = claim_idle_ms
        self._stopping = threading.Event()
        # Blocking reads need a socket timeout longer than the block.
        self.client = redis.Redis(connection_pool=rt.redis.connection_pool)
        self._read = scripts.load(self.client, "read_requests")

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        failures = 0
        next_claim = 0.0
        group_ready = False
        while not self._stopping.is_set():
            try:
                if not group_ready:
                    self.ensure_group()
                    group_ready = True
                if time.monotonic() >= next_claim:
                    self.claim_abandoned()
                    next_claim = time.monotonic() + self.claim_idle_ms / 2000
                self.read_once(block_ms=DEFAULT_BLOCK_MS)
                failures = 0
            except redis.RedisError as exc:
                if "NOGROUP" in str(exc):  # the stream or group vanished (a Redis that lost its data)
                    group_ready = False
                    continue
                failures += 1
                delay = _backoff(failures)
                log.warning("intake_redis_error", error=str(exc), retry_in_s=delay)
                self._stopping.wait(delay)
            except Exception:  # a bug (or MemoryError) must not end the thread unseen: log it and go on
                failures += 1
                delay = _backoff(failures)
                log.exception("intake_loop_failed", retry_in_s=delay)
                self._stopping.wait(delay)

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("intake_group_created", stream=self.stream, group=self.group)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_once(self, *, block_ms: int | None = None) -> int:
        """Handle one batch of new entries, read through the script; when there are none and `block_ms` is given,
        wait that long for the next one (read whole: see the module docstring). Returns how many were handled."""
        _, entries = self._read(
            keys=[self.stream],
            args=["new", self.group, self.consumer, DEFAULT_BATCH, self.rt.settings.cekura_request_max_bytes, 0, "0-0"],
        )
        for entry in entries:
            self._handle_read(entry)
        if entries or block_ms is None:
            return len(entries)
        reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=1, block=block_ms)
        handled = 0
        for _, waited in reply or []:
            for entry_id, fields in waited:
                self.handle(entry_id, fields)
                handled += 1
        return handled

    def claim_abandoned(self) -> int:
        """Take over entries left pending too long (by a consumer that died, or by a Redis error reply), and handle
        them."""
        handled = 0
        cursor: Any = "0-0"
        max_bytes = self.rt.settings.cekura_request_max_bytes
        while True:
            cursor, entries = self._read(
                keys=[self.stream],
                args=["claim", self.group, self.consumer, DEFAULT_BATCH, max_bytes, self.claim_idle_ms, cursor],
            )
            for entry in entries:
                if len(entry) == 1:  # deleted while pending (Redis 6.2; Redis 7 drops those itself)
                    self.client.xack(self.stream, self.group, entry[0])
                    continue
                log.info("intake_entry_reclaimed", entry_id=as_text(entry[0]))
                self._handle_read(entry)
                handled += 1
            if cursor in (b"0-0", "0-0"):
                self.forget_departed()
                return handled

    def forget_departed(self) -> int:
        """Remove consumers of processes long gone (nothing pending, idle an hour) so the group doesn't grow."""
        removed = 0
        for consumer in self.client.xinfo_consumers(self.stream, self.group):
            name = as_text(consumer["name"])
            if name != self.consumer and consumer["pending"] == 0 and consumer["idle"] > DEFAULT_FORGET_IDLE_MS:
                self.client.xgroup_delconsumer(self.stream, self.group, name)
                removed += 1
        return removed

    def handle(self, entry_id: Any, fields: dict[Any, Any]) -> bool:
        """Record, cancel or reject one entry and acknowledge it; False when it stays pending after a Redis error
        reply, to be tried again when claimed. Raises the Redis errors that are about the server."""
        raw = fields.get(b"request", fields.get("request"))
        others = [name for name in fields if name not in (b"request", "request")]
        return self._handle(entry_id, raw, None, others, len(others))

    def _handle_read(self, entry: list[Any]) -> bool:
        """`handle` for an entry as read_requests.lua describes it: {id, request | None, its length, other field
        names, how many other fields}."""
        entry_id, raw, size, names, others = entry
        return self._handle(entry_id, raw, int(size), names, int(others))

    def _handle(self, entry_id: Any, raw: Any, size: int | None, names: list[Any], others: int) -> bool:
        entry = as_text(entry_id)
        try:
            self._dispatch(entry, raw, size, names, others)
        except redis.RedisError as exc:
            if about_the_server(exc):
                raise  # not acknowledged: retried by this consumer or, if it dies, claimed by another
            if not self._give_up(entry_id, raw, exc):
                return False
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()
        return True

    def _dispatch(self, entry: str, raw: Any, size: int | None, names: list[Any], others: int) -> None:
        try:
            has_request = raw is not None or (size is not None and size >= 0)
            if has_request and others:  # (an entry with no `request` at all is refused for that, below)
                raise InvalidRequest(_extra_fields(names, others))
            if raw is None and has_request:  # left in Redis by read_requests.lua: over the limit
                requests.check_size(size or 0, self.rt.settings)
            # A request without a job_id gets one derived from its entry, so a redelivered entry is the same job.
            request = requests.parse(raw, self.rt.settings, default_job_id=f"req-{entry}")
            if isinstance(request, requests.CancelRequest):
                outcome = submission.cancel(self.rt.store, self.rt.broker, request.job_id)
                log.info("cancel_request_handled", entry_id=entry, job_id=request.job_id, result=outcome.result)
            elif isinstance(request, requests.AnswerRequest):
                answered = submission.answer(self.rt.store, request.job_id, request.answer)
                if answered.result != "ok":  # the asker reads why on the results stream
                    raise InvalidRequest(answered.message)
            else:
                # Once the job is recorded this raises only Redis errors: a failed start message is left to the
                # reconciler, so the entry is never rejected for a job that exists.
                submission.submit(self.rt.store, self.rt.broker, request)
        except InvalidRequest as exc:
            self.reject(entry, raw, str(exc))
        except redis.RedisError:
            raise
        except Exception as exc:  # a bug must not wedge the stream: reject the entry, keep the trace (masked)
            secrets = _identify(raw, self.rt.settings.cekura_request_max_bytes)[2]
            trace = redact("".join(traceback.format_exception(exc)), secrets)
            log.error("intake_entry_failed", entry_id=entry, exception=trace)
            self.reject(entry, raw, f"internal error while handling the request ({type(exc).__name__})")

    def _give_up(self, entry_id: Any, raw: Any, exc: redis.RedisError) -> bool:
        """After a Redis error reply about this entry: True once it has been tried enough and is rejected."""
        entry = as_text(entry_id)
        pending = self.client.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        tries = int(pending[0]["times_delivered"]) if pending else 0
        error = redact(str(exc))[:DEFAULT_ERROR_QUOTE_CHARS]  # masked before the cut
        if tries < DEFAULT_MAX_ENTRY_TRIES:
            log.warning(
                "intake_entry_redis_error", entry_id=entry, error=error, tries=tries, max_tries=DEFAULT_MAX_ENTRY_TRIES
            )
            return False
        try:
            self.reject(entry, raw, f"request could not be recorded after {tries} tries: {error}")
        except redis.RedisError as again:
            if about_the_server(again):
                raise
            log.error(
                "intake_entry_stuck", entry_id=entry, error=redact(str(again))[:DEFAULT_ERROR_QUOTE_CHARS], tries=tries
            )
            return False
        return True

    def reject(self, entry_id: str, raw: Any, reason: str) -> None:
        """Publish the entry's `rejected` event (once per entry). Its `job_id` is empty, since no job was made;
        `requested_job_id` is the id the request asked for, when it can be read safely. Every text in it is masked:
        the deployment's secrets, and the request's own secret params as far as it can be read."""
        requested_job_id, kind, secrets = _identify(raw, self.rt.settings.cekura_request_max_bytes)
        reason = redact(reason, secrets)
        fields = {
            "job_id": "",
            "kind": kind,
            "status": "rejected",
            "cekura_status": "",
            "progress_id": "",
            "result": "",
            "error": f"{reason} (request entry {entry_id})",
            "polls": "0",
            "submitted_at": "",  # both set by reject.lua, on the server's clock
            "finished_at": "",
            "metadata": "{}",
            "request_id": entry_id,
            "requested_job_id": requested_job_id,
        }
        fields = {name: redact(value, secrets) for name, value in fields.items()}
        requested_job_id = fields["requested_job_id"]
        if self.rt.store.reject(entry_id, fields):
            metrics.JOBS_REJECTED.inc()
            log.warning("request_rejected", entry_id=entry_id, requested_job_id=requested_job_id or None, reason=reason)


def _backoff(failures: int) -> float:
    return min(DEFAULT_MAX_BACKOFF_S, 0.5 * 2.0 ** min(failures, 6))


def _extra_fields(names: list[Any], count: int) -> str:
    """The rejection of an entry with fields besides `request`: the names that are short and printable, sorted
    (a name is the producer's text, shown like a field of the request would be), and how many others there are."""
    shown = set()
    for name in names:
        try:
            text = name.decode() if isinstance(name, bytes) else str(name)
        except UnicodeDecodeError:
            continue
        if len(text) <= DEFAULT_MAX_FIELD_NAME_CHARS and text.isprintable():
            shown.add(text)
    listed = sorted(shown)[:DEFAULT_MAX_FIELD_NAMES]
    more = count - len(listed)
    described = ", ".join(map(repr, listed)) + (f"{' and ' if listed else ''}{more} other(s)" if more else "")
    return f"entry has field(s) besides 'request': {described}; XADD only 'request'"


def _identify(raw: Any, max_bytes: int) -> tuple[str, str, tuple[str, ...]]:
    """The job id and kind a rejected request asked for, when they can be read safely, and its secret params' values
    (to mask): never from a request over the size limit, which is not parsed at all."""
    if isinstance(raw, str):
        if len(raw) > max_bytes:  # at least one byte a character: over the limit without encoding it
            return "", "", ()
        raw = raw.encode("utf-8", "surrogatepass")
    if not isinstance(raw, bytes) or len(raw) > max_bytes:
        return "", "", ()
    try:
        value = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        return "", "", ()
    if not isinstance(value, dict):
        return "", "", ()
    job_id = value.get("job_id")
    kind = value.get("kind")
    safe_id = job_id if isinstance(job_id, str) and requests.JOB_ID_PATTERN.fullmatch(job_id) else ""
    safe_kind = kind if isinstance(kind, str) and len(kind) <= 64 and kind.isprintable() else ""
    return safe_id, safe_kind, _secret_params(value.get("params"))


#: The params any kind keeps secret (`api_key`, `mcp_server_headers`).
_SECRET_FIELDS = sorted({name for job_kind in KINDS.values() for name in job_kind.secret_fields})


def _secret_params(params: Any) -> tuple[str, ...]:
    """The values of a rejected request's secret params, whatever its kind (even one that is not known)."""
    if not isinstance(params, dict):
        return ()
    stored = {}
    for name in _SECRET_FIELDS:
        value = params.get(name)
        if isinstance(value, str):
            stored[name] = value
        elif isinstance(value, dict):
            try:
                stored[name] = json.dumps(value)
            except (TypeError, ValueError, RecursionError):
                continue
    return JobKind.secret_values(stored)
