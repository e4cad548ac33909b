"""The API's wire models: they are its OpenAPI schema (``tests/e2e/test_api_schema.py`` fuzzes
it). ``JobOut`` and ``DeadLetterOut`` mirror ``models.Job`` and ``models.DeadLetter`` on purpose:
the API is a published contract and moves only with a version, while the records may change.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime.
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from headwater.models import JobStatus


class JobRequest(BaseModel):
    """A job to run: ``docs`` indexes ``source``; ``signals`` backfills ``source`` into
    ``feature_set``; ``replay`` re-runs dead letters (``ids`` or all)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Literal["docs", "replay", "signals"] = "docs"
    source: str | None = Field(
        None, min_length=1, max_length=4096, description="Folder or URL (docs); file or folder (signals)"
    )
    feature_set: str | None = Field(
        None, min_length=1, max_length=256, description="Declared feature set (signals; default: the home's)"
    )
    ids: list[int] | None = Field(None, max_length=1000, description="Dead-letter ids (replay)")
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs first among queued jobs")


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    ids: list[int] | None = Field(None, max_length=1000, description="Entries to replay; omit for all")


class Created(BaseModel):
    id: str


class JobOut(BaseModel):
    id: str
    kind: str
    spec: dict[str, Any]
    priority: int
    status: JobStatus
    reason: str | None
    progress: dict[str, int]
    runs: int
    created_at: str
    updated_at: str


class JobList(BaseModel):
    jobs: list[JobOut]


class DeadLetterOut(BaseModel):
    id: int
    kind: str
    input_ref: str
    source: str
    stage: str
    error_type: str
    message: str
    attempts: int
    created_at: str
    replayed_at: str | None


class DeadLetterList(BaseModel):
    entries: list[DeadLetterOut]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    checks: dict[str, str] = Field(default_factory=dict)


class Problem(BaseModel):
    detail: str


QUERY_MAX_CHARS = 8192  # a query is a question, not a document (MiniLM reads 256 tokens of it)


class Hit(BaseModel):
    text: str
    score: float = Field(description="Cosine similarity, higher is closer")
    doc_id: str
    uri: str = Field(description="The document's path relative to the folder it was ingested from")
    offset: int = Field(description="Where the chunk starts in the document's normalized text, in characters")
    length: int
    source_start: int | None = Field(
        description="Where the chunk starts in the decoded file (for a PDF, in page `page`'s extracted text)"
    )
    source_end: int | None = Field(
        description="Where it ends (exclusive; for a PDF, in page `page_end`'s text); null: older index",
    )
    page: int | None = Field(description="PDFs: the page the chunk starts on, from 1; null otherwise")
    page_end: int | None = Field(description="PDFs: the page it ends on")
    chunk_id: str


class QueryOut(BaseModel):
    hits: list[Hit]
    embedder: str = Field(description="The embedder the index was built with and the query embedded by")
    took_ms: float


class Action(StrEnum):
    pause = "pause"
    resume = "resume"
    cancel = "cancel"


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Unreadable request (body is not JSON, bad Last-Event-ID)"},
    401: {"model": Problem, "description": "Missing or wrong bearer token"},
    404: {"model": Problem, "description": "No such job"},
    409: {"model": Problem, "description": "The job's status does not allow this"},
    413: {"model": Problem, "description": "Request body too large"},
    422: {"model": Problem, "description": "Invalid request: which field, and why"},
}
QUERY_ERRORS: dict[int | str, dict[str, Any]] = {
    **{code: ERRORS[code] for code in (400, 401, 413, 422)},
    409: {"model": Problem, "description": "The home has no index yet (nothing was ingested)"},
    503: {"model": Problem, "description": "The index or its embedder cannot be opened or is unavailable"},
}
