"""Structured logs: one JSON object per line on stdout (or readable console lines), configured once per process.

Dramatiq's and other libraries' stdlib log records go through structlog's `ProcessorFormatter`, so every line
has the same shape: `timestamp` (ISO 8601 UTC), `level`, `event`, `logger`, plus the job context that
`worker.broker.middleware.JobContext` binds (`job_id`, `kind`, `progress_id`, `poll`) and, with tracing on, the
job span's `trace_id` and `span_id`, read from the step's tracing scope (`worker.tracing.spans.enter` sets it), so a
log line leads to its trace.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from config.settings import Settings
from worker.redact import redact
from worker.tracing import state as tracing_state

#: This process's id, on every line: several worker processes share one stdout.
_PID = os.getpid()


def _redact_values(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
        elif isinstance(value, dict | list | tuple):
            event[key] = _redact_nested(value)
    return event


def _redact_nested(value: Any) -> Any:
    """Strings inside a logged dict or list, masked too (a Cekura answer logged as a value, say)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_nested(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_nested(v) for v in value]
    return value


def _add_trace_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """The job span's ids, on a line written while a step of a traced job runs (`worker.tracing.spans.Scope`)."""
    scope = tracing_state.scope.get()
    if scope is not None:
        event.setdefault("trace_id", scope.trace_id)
        event.setdefault("span_id", scope.span_id)
    return event


def _add_pid(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    event["pid"] = _PID
    return event


def _dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(obj, default=str, ensure_ascii=False, separators=(",", ":"))


def configure(settings: Settings) -> None:
    """Route structlog and stdlib logging to stdout in the configured format and level."""
    global _PID
    _PID = os.getpid()
    level = getattr(logging, settings.log_level)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.format_exc_info,
        _add_pid,
        _redact_values,
    ]
    renderer: Processor
    if settings.log_format == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Filters by level in the method itself, so a per-poll debug line costs nothing when DEBUG is off.
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Dramatiq logs every message at DEBUG; keep it at INFO unless asked, and quiet the HTTP stack.
    logging.getLogger("dramatiq").setLevel(max(level, logging.INFO))
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
