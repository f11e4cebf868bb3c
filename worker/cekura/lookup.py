"""Finding an operation again whose start answer was lost: the tag a start carries, and the search for it.

Cekura has no idempotency key, so a start whose answer was lost (a read timeout, a dropped connection, a 5xx after
sending) may or may not have started the operation. For a kind that declares `tag_field` and `lookup_path` (evaluator
runs: a run's `name`, and the results list filtered by `search`), every start carries a tag naming its job,
`[cw:<job id>~<check>]`, at the end of that field, where people see it in Cekura's dashboard. `<check>` is 10 hex
digits of an HMAC, keyed with the Cekura API key, of the job id and its submission time: a run named by hand or by
another job can't carry it, and a job id used again (its record expired) gets another. The job then looks for the
tag instead of failing: it adopts a result only when exactly one ends with the tag and it was created after the
job was submitted, and fails "outcome unknown" as before when nothing turns up within the settle window. Nothing
is ever sent again.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: Longest value Cekura takes in a run's name.
DEFAULT_MAX_NAME_CHARS = 255

#: Clock difference allowed between Cekura (a result's `created_at`) and Redis (a job's submission time): a result
#: created more than this before the job was submitted is not the job's.
DEFAULT_CLOCK_SKEW_S = 60.0

#: Results read per lookup: one page. More results carrying one job's tag than this is ambiguous anyway.
DEFAULT_PAGE_SIZE = 100


#: Hex digits of the tag's check.
DEFAULT_CHECK_DIGITS = 10


def tag(job_id: str, submitted_ms: int, key: str) -> str:
    """The tag the start of job `job_id` (submitted at `submitted_ms`) carries; `key`: the Cekura API key."""
    check = hmac.new(key.encode(), f"{job_id}\n{submitted_ms}".encode(), hashlib.sha256).hexdigest()
    return f"[cw:{job_id}~{check[:DEFAULT_CHECK_DIGITS]}]"


def with_tag(value: Any, mark: str) -> str:
    """`value` (a run's name, or None) with the tag `mark` at its end, cut to Cekura's 255 characters: the name is
    shortened, never the tag (a job id is at most 128 characters)."""
    text = value if isinstance(value, str) else ""
    room = DEFAULT_MAX_NAME_CHARS - len(mark) - 1
    return f"{text[:room].rstrip()} {mark}" if text.strip() else mark


@dataclass(frozen=True, slots=True)
class Found:
    """What a lookup found: `result_id` when exactly one result carries the tag and is the job's."""

    result_id: str = ""
    #: Why nothing was adopted (empty when `result_id` is set).
    reason: str = ""
    #: True when more looking can't help (two results carry the tag): fail now.
    final: bool = False


def choose(answer: dict[str, Any], mark: str, submitted_ms: int) -> Found:
    """The job's result among a results-list answer (`{count, results: [...]}`): the one whose name ends with the
    job's tag `mark`, created after the job was submitted."""
    results = answer.get("results")
    if not isinstance(results, list):
        return Found(reason="the results list answered without a list of results")
    tagged = [r for r in results if isinstance(r, dict) and str(r.get("name") or "").rstrip().endswith(mark)]
    count = answer.get("count")
    if len(tagged) > 1 or (isinstance(count, int) and count > len(results) and tagged):
        ids = ", ".join(str(r.get("id")) for r in tagged[:5])
        return Found(reason=f"{len(tagged)} results carry the tag {mark} ({ids}): none adopted", final=True)
    if not tagged:
        return Found(reason=f"no result carries the tag {mark}")
    found = tagged[0]
    created = _epoch_ms(found.get("created_at"))
    if created is None or created < submitted_ms - DEFAULT_CLOCK_SKEW_S * 1000:
        found_id = found.get("id")
        return Found(reason=f"the one result carrying {mark} ({found_id}) was created before the job: not adopted")
    result_id = found.get("id")
    if isinstance(result_id, bool) or not isinstance(result_id, int | str) or not str(result_id).isdigit():
        return Found(reason=f"the result carrying {mark} has no usable id")
    return Found(result_id=str(result_id))


def _epoch_ms(value: Any) -> int | None:
    """An ISO 8601 time as epoch ms (a naive time is taken as UTC); None if it isn't one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = moment.timestamp() * 1000
    return int(stamp) if math.isfinite(stamp) else None
