"""`scenario.from_transcript`: create an evaluator from a call transcript."""

from typing import Annotated, Literal

from pydantic import Field

from actors.kinds.base import JobKind, Outcome, Params


class TranscriptMessage(Params):
    role: Literal["Main Agent", "Testing Agent", "Function Call", "Function Call Result"]
    content: str
    start_time: float | None = None


class ScenarioFromTranscriptParams(Params):
    transcript_json: Annotated[list[TranscriptMessage], Field(min_length=1)]
    agent: int | None = None
    assistant_id: str | None = None
    personality: int | None = None
    name: str | None = None
    expected_outcome_prompt: str | None = None
    folder_path: str | None = None


KIND = JobKind(
    name="scenario.from_transcript",
    params=ScenarioFromTranscriptParams,
    start_path="/test_framework/v1/scenarios/create-from-transcript-bg/",
    progress_path="/test_framework/v1/scenarios/create-from-transcript-progress/",
    terminal={"completed": Outcome.COMPLETED, "failed": Outcome.FAILED},
    repeatable_start=False,  # a second call creates a second evaluator
)
