"""What the pages read from Redis, bounded in bytes, and how a value read is made fit to show.

Every read goes through one Lua script (`reads.lua`) that returns each value cut to a length chosen per field, with
its whole length, so a page costs Redis (and the console) the bytes it shows, whatever the records and events hold:
a stray 10 MB result, or many of them, reads as its first bytes only. A value that came back cut is a `Partial`.

Showing a value is `clip`: *redact first*, then cut to the display length. A `Partial` is redacted before its end is
dropped too (`DEFAULT_MARGIN_CHARS`), since a secret straddling the cut in Redis is no longer whole, so `redact`
can't recognise it; dropping the end removes whatever part of it came back.

Text is decoded leniently (bytes that aren't UTF-8 become U+FFFD), and times are parsed only from short ASCII
digits, so one malformed record or event is shown as it is rather than failing a page.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from actors.kinds.base import JobKind
from config.settings import Settings
from worker.redact import redact

#: The script's text.
SOURCE = Path(__file__).with_name("reads.lua").read_text()

#: Bytes read at most of a value shown in a table cell, a feed line or a timeline line.
CELL_BYTES = 16_384

#: Bytes read at most of a text field of a job's record (error, question, stage, ...).
TEXT_BYTES = 32_768

#: Bytes read at most of a payload (params, metadata, result): payloads up to this size are shown indented.
PAYLOAD_BYTES = 1_048_576

#: Bytes read at most of a time, a count or a state.
SHORT_BYTES = 64

#: Bytes read at most of a job's stored secrets (longer ones are not read).
SECRET_BYTES = 65_536

#: Characters dropped from the end of a value that came back cut, after redacting it (the longest secret, in any
#: escaped form, that could straddle the cut).
DEFAULT_MARGIN_CHARS = 1024

#: The longest schedule member read as a job id.
MAX_ID_BYTES = 1024

#: Bytes one `entries` call returns at most (values and ids).
DEFAULT_BUDGET = 1_048_576

_SHA = hashlib.sha1(SOURCE.encode()).hexdigest()


class Partial(str):
    """The start of a value too long to read whole (`size`: the whole value's length in bytes)."""

    size: int

    def __new__(cls, text: str, size: int) -> Partial:
        value = super().__new__(cls, text)
        value.size = size
        return value


def text(value: Any) -> str:
    """A reply value as text: bytes that aren't UTF-8 become U+FFFD instead of failing."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def ms_of(value: str | None) -> int:
    """An epoch time in ms written as digits, or 0 for anything else (a digit no int() takes, 5000 of them...)."""
    if value and not isinstance(value, Partial) and value.isascii() and value.isdecimal() and len(value) <= 15:
        return int(value)
    return 0


def entry_ms(entry_id: str) -> int:
    """The ms part of a stream entry id (0 if it has none)."""
    return ms_of(entry_id.partition("-")[0])


def clip(value: str, chars: int, extra: Iterable[str] = (), *, flat: bool = False) -> str:
    """`value` as shown: redacted (the registered secrets and `extra`), then cut to `chars` (ending "..."); `flat`:
    with each run of whitespace made one space (after redacting, so a secret holding whitespace is still found)."""
    partial = isinstance(value, Partial)
    shown = redact(str(value), tuple(extra))
    if partial:
        shown = shown[: max(0, len(shown) - DEFAULT_MARGIN_CHARS)]
    if flat:
        shown = " ".join(shown.split())
    if partial or len(shown) > chars:
        return shown[: max(0, chars - 3)] + "..."
    return shown


def _value(part: Any, size: Any) -> str | None:
    if part is None:
        return None
    decoded = text(part)
    whole = int(size)
    return Partial(decoded, whole) if whole > len(part) else decoded


def _values(reply: Sequence[Any], names: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for j, name in enumerate(names):
        value = _value(reply[2 * j], reply[2 * j + 1])
        if value is not None:
            out[name] = value
    return out


def _pairs(fields: Mapping[str, int]) -> list[Any]:
    return [item for name, limit in fields.items() for item in (name, limit)]


def call(client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """Run the script (loading it first if this Redis doesn't have it)."""
    try:
        return client.execute_command("EVALSHA", _SHA, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        client.script_load(SOURCE)
        return client.execute_command("EVALSHA", _SHA, len(keys), *keys, *args)


@dataclass(frozen=True, slots=True)
class Job:
    """A job's record as read: `found` when its key holds a hash; the fields asked for that it has; and the texts
    of its stored secrets (a running job of a kind with secret params), to mask wherever it is shown."""

    found: bool
    fields: dict[str, str]
    secrets: tuple[str, ...] = ()


def _secrets(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    stored = text(raw)
    try:
        mapping = json.loads(stored)
    except (ValueError, RecursionError):
        return (stored,)
    if not isinstance(mapping, dict):
        return (stored,)
    return JobKind.secret_values({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in mapping.items()})


def _job(row: Sequence[Any], names: Sequence[str]) -> Job:
    found = text(row[0]) == "hash"
    return Job(found, _values(row[2:], names) if found and names else {}, _secrets(row[1]))


def _prefixes(settings: Settings) -> list[str]:
    return [settings.key("job") + ":", settings.key("secret") + ":", str(SECRET_BYTES)]


def jobs(client: redis.Redis, settings: Settings, job_ids: Sequence[str], fields: Mapping[str, int]) -> list[Job]:
    """The records of `job_ids`: `fields` (name: bytes to read at most) and their stored secrets."""
    if not job_ids:
        return []
    names = list(fields)
    reply = call(client, [], ["jobs", *_prefixes(settings), len(job_ids), *job_ids, *_pairs(fields)])
    return [_job(row, names) for row in reply]


def schedule(
    client: redis.Redis, settings: Settings, count: int, fields: Mapping[str, int]
) -> tuple[int, int, list[tuple[str, Job]]]:
    """The schedule's size, how many members were read, and the records of the `count` jobs due soonest."""
    names = list(fields)
    args = ["schedule", *_prefixes(settings), count, MAX_ID_BYTES, *_pairs(fields)]
    reply = call(client, [settings.key("schedule")], args)
    rows = [(text(row[0]), _job(row[1:], names)) for row in reply[1:]]
    return int(reply[0]), min(count, int(reply[0])), rows


@dataclass
class Entries:
    """What one `entries` read found: the kept entries (id, fields), how many were scanned, the last id scanned,
    whether the range has no more, and the bytes the kept values took."""

    rows: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    scanned: int = 0
    last: str = ""
    ended: bool = True
    used: int = 0


def entries(
    client: redis.Redis,
    stream: str,
    fields: Mapping[str, int],
    *,
    start: str,
    end: str,
    count: int,
    reverse: bool = False,
    match: tuple[str, str] = ("", ""),
    rows: int = 0,
    budget: int = DEFAULT_BUDGET,
) -> Entries:
    """Up to `count` entries of `stream` from `start` towards `end` (newest first with `reverse`), those whose field
    `match[0]` is `match[1]` (all when it is ""), until `rows` are kept or their values reach `budget` bytes."""
    names = list(fields)
    args = ["entries", "rev" if reverse else "fwd", start, end, count, max(1, budget), rows, *match, *_pairs(fields)]
    scanned, last, ended, used, found = call(client, [stream], args)
    kept = [(text(row[0]), _values(row[1:], names)) for row in found]
    return Entries(kept, int(scanned), text(last), bool(int(ended)), int(used))
