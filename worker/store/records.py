"""The typed values the job store returns: verdicts as enums and a job's record as a dataclass, parsed once from
the scripts' replies, so the actors never read a job as `dict[str, str]`.

The verdicts are `StrEnum`s, so they still compare equal to the words the Lua scripts return.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    """Which step of a job a message drives."""

    START = "start"
    POLL = "poll"


class ClaimVerdict(StrEnum):
    """The answer to "may I make this job's next Cekura call?"."""

    OK = "ok"  #: yes: the claim (lease) is this message's
    WAIT = "wait"  #: not yet: a rate limit or a 429 cooldown; re-send after `wait_ms`
    EXPIRED = "expired"  #: the job's deadline passed: time it out
    STALE = "stale"  #: another message owns this step, or the job moved on: do nothing
    GONE = "gone"  #: no such job (its record expired)
    CORRUPT = "corrupt"  #: the job's key holds something other than a job record


class AdvanceVerdict(StrEnum):
    """What recording a non-final step did."""

    OK = "ok"
    FINISHED = "finished"  #: the job ended meanwhile (a cancel, a timeout)
    STALE = "stale"
    GONE = "gone"
    CORRUPT = "corrupt"


class FinishVerdict(StrEnum):
    """What ending a job did: `ok` means this call published the result event."""

    OK = "ok"
    DONE = "done"  #: it had already ended
    STALE = "stale"
    GONE = "gone"
    CORRUPT = "corrupt"


#: The fields a claim returns, in the order `_claim.lua` reads them (tests/layout checks the two agree).
CLAIM_FIELDS = (
    "seq",
    "kind",
    "params",
    "progress_id",
    "session_id",
    "polls",
    "errors",
    "deadline_ms",
    "cekura_status",
    "current_stage",
    "submitted_ms",
    "started_ms",
    "updated_ms",
    "answer",
    "start_sent",
    "answer_sent",
    "start_claim",
    "traceparent",
    "tracestate",
)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What a step needs of a job's record, typed."""

    seq: int
    kind: str
    params: str  #: JSON of the public params (secrets live apart)
    progress_id: str = ""
    session_id: int | None = None
    polls: int = 0
    errors: int = 0
    deadline_ms: int = 0
    cekura_status: str = ""
    current_stage: str = ""
    submitted_ms: int = 0
    #: When the start call answered (Redis clock), 0 before.
    started_ms: int = 0
    #: When the job last moved (its previous step), on the Redis clock.
    updated_ms: int = 0
    #: An answer waiting to be sent to Cekura (a job that asked a question).
    answer: str = ""
    #: A start call was made for this job before this claim: it may have reached Cekura.
    start_sent: bool = False
    #: An earlier claim was made to send the recorded answer: it may have reached Cekura.
    answer_sent: bool = False
    #: The job's latest start claim's token (`<server ms>:<n>`): a start attempt's fence (`JobStore.mark_start_sent`).
    start_claim: str = ""
    #: The job span's W3C trace context (`worker.tracing.context`), empty when the job has none.
    traceparent: str = ""
    tracestate: str = ""

    @property
    def deadline_s(self) -> float:
        """The deadline the job was given, in seconds from its submission."""
        return (self.deadline_ms - self.submitted_ms) / 1000

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> JobRecord:
        """From a job hash's fields as text (a claim's reply, or `JobStore.get`)."""
        session = fields.get("session_id", "")
        return cls(
            seq=int(fields.get("seq", "0") or 0),
            kind=fields.get("kind", ""),
            params=fields.get("params", "{}") or "{}",
            progress_id=fields.get("progress_id", ""),
            session_id=int(session) if session.lstrip("-").isdigit() else None,
            polls=int(fields.get("polls", "0") or 0),
            errors=int(fields.get("errors", "0") or 0),
            deadline_ms=int(fields.get("deadline_ms", "0") or 0),
            cekura_status=fields.get("cekura_status", ""),
            current_stage=fields.get("current_stage", ""),
            submitted_ms=int(fields.get("submitted_ms", "0") or 0),
            started_ms=int(fields.get("started_ms", "0") or 0),
            updated_ms=int(fields.get("updated_ms", "0") or 0),
            answer=fields.get("answer", ""),
            start_sent=fields.get("start_sent", "") == "1",
            answer_sent=fields.get("answer_sent", "") == "1",
            start_claim=fields.get("start_claim", ""),
            traceparent=fields.get("traceparent", ""),
            tracestate=fields.get("tracestate", ""),
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim's answer; `job` is set when the verdict is `ok`."""

    verdict: ClaimVerdict
    now_ms: int = 0
    wait_ms: int = 0
    wait_reason: str = ""
    #: For `wait`: a rate slot was reserved, so the re-sent message must not take another.
    reserved: bool = False
    #: For `wait`: ms left before the job's deadline (no re-send may be due later than that).
    remaining_ms: int = 0
    job: JobRecord | None = None

    def time_left_s(self, age_s: float = 0.0) -> float:
        """Seconds before the job's deadline, for an `ok` claim made `age_s` ago."""
        assert self.job is not None
        return (self.job.deadline_ms - self.now_ms) / 1000 - age_s


@dataclass(frozen=True, slots=True)
class Advanced:
    """The answer to `JobStore.advance`."""

    verdict: AdvanceVerdict
    #: The Cekura status or stage changed with this step (it was logged and, if on, published as progress).
    changed: bool = False
    #: For `finished`: the job's Cekura session, if it has one (to cancel an operation a late start began).
    session_id: str = ""


@dataclass(frozen=True, slots=True)
class Finish:
    """The answer to a finish request: `ok` means this call published the result event."""

    verdict: FinishVerdict
    entry_id: str = ""
    prior_state: str = ""
    session_id: str = ""
    kind: str = ""
    status: str = ""
    #: From submission to this finish, on the Redis server's clock.
    duration_ms: int = 0
    #: The job's `cancel_remote` message was written with it (see `finish(remote_cancel=...)`).
    remote_cancel: bool = False
    #: What the job's spans are made of, when it has trace context (only with verdict `ok`).
    trace: FinishTrace | None = None

    @classmethod
    def from_reply(cls, reply: list[str]) -> Finish:
        """`finish.lua`'s reply, as text."""
        verdict = FinishVerdict(reply[0])
        if verdict is FinishVerdict.DONE:
            return cls(verdict, status=reply[1])
        if verdict is not FinishVerdict.OK:
            return cls(verdict)
        entry_id, prior_state, session_id, kind, duration_ms, remote_cancel = reply[1:7]
        trace = None
        if len(reply) > 7 and reply[11]:  # the job has trace context
            now_ms, submitted, polls, updated, traceparent, parent, state, link, polls_from, status = reply[7:17]
            trace = FinishTrace(
                traceparent,
                parent,
                state,
                link,
                submitted_ms=_int(submitted),
                finished_ms=_int(now_ms),
                polls_before=_int(polls),
                updated_before_ms=_int(updated),
                polls_from_ms=_int(polls_from),
                cekura_status=status,
            )
        return cls(
            verdict,
            entry_id,
            prior_state,
            session_id,
            kind,
            duration_ms=int(duration_ms),
            remote_cancel=remote_cancel == "1",
            trace=trace,
        )


@dataclass(frozen=True, slots=True)
class FinishTrace:
    """A finished job as its spans see it (`finish.lua` reads it in the step that ends the job): its trace context,
    its times on the Redis clock, and how far its polls had got."""

    #: The job span's context, the producer's span id (empty for a job that began its trace), the producer's
    #: `tracestate`, and the `traceparent` of the job a retry retries.
    traceparent: str
    parent_span_id: str = ""
    tracestate: str = ""
    link: str = ""
    submitted_ms: int = 0
    finished_ms: int = 0
    #: Polls recorded before the finish, and when the job last moved before it.
    polls_before: int = 0
    updated_before_ms: int = 0
    #: When the first poll past the traced ones ran (0: none did), on the Redis clock.
    polls_from_ms: int = 0
    cekura_status: str = ""


def _int(text: str) -> int:
    return int(text) if text.lstrip("-").isdigit() else 0


@dataclass(frozen=True, slots=True)
class RemoteCancel:
    """What `finish` needs to write a `cancel_remote` message along with a cancel, for kinds that have one."""

    kinds: frozenset[str]
    queue_name: str
    namespace: str
    actor_name: str
    #: Of `kinds`, those that find their operation again by its tag (`actors.lookup`): a job of one of them that
    #: ended while still looking for its lost start (polling, no progress id yet) gets the message too, with no id.
    lookup_kinds: frozenset[str] = frozenset()
