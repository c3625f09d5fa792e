"""The gateway's wire format: request bodies (validated with pydantic) and response bodies.

`/v1/query` and `/v1/feedback` are the gateway's own API; `/v1/chat/completions` follows
OpenAI's chat completions shape so existing clients work unchanged, with what only this
gateway knows (query_id, citations) in an extra top-level field `contextlm`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .citations import Citations
from .prompting import Prompt
from .upstream import Retrieved

MAX_QUESTION = 10_000


class QueryRequest(BaseModel):
    """POST /v1/query."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    question: str = Field(min_length=1, max_length=MAX_QUESTION)
    top_k: int | None = Field(default=None, ge=1, le=100, alias="topK")
    filter: dict[str, str] = Field(default_factory=dict, max_length=32)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=65536, alias="maxTokens")

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question is blank")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class ContextlmOptions(BaseModel):
    """The `contextlm` extension of a chat request: retrieval options."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    top_k: int | None = Field(default=None, ge=1, le=100, alias="topK")
    filter: dict[str, str] = Field(default_factory=dict, max_length=32)


class ChatRequest(BaseModel):
    """POST /v1/chat/completions: the fields this gateway uses; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=65536)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=65536)
    stream_options: dict[str, Any] | None = None
    contextlm: ContextlmOptions = Field(default_factory=ContextlmOptions)

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role != "user" or not messages[-1].text().strip():
            raise ValueError("the last message must be a non-empty user message")
        if len(messages[-1].text()) > MAX_QUESTION:
            raise ValueError(f"the question is longer than {MAX_QUESTION} characters")
        return messages

    def question(self) -> str:
        return self.messages[-1].text()

    def history(self) -> list[dict[str, str]]:
        return [
            {"role": m.role, "content": m.text()}
            for m in self.messages[:-1]
            if m.role in ("user", "assistant")
        ]

    def system(self) -> str:
        return "\n\n".join(m.text() for m in self.messages if m.role in ("system", "developer"))

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class FeedbackRequest(BaseModel):
    """POST /v1/feedback (the key may come in an Idempotency-Key header instead)."""

    model_config = ConfigDict(extra="forbid")

    query_id: uuid.UUID
    rating: Literal["up", "down"]
    correction: str | None = Field(default=None, max_length=65_536)
    comment: str | None = Field(default=None, max_length=16_384)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)


def reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


# Responses ---------------------------------------------------------------------------


@dataclass
class Answer:
    query_id: uuid.UUID
    text: str
    prompt: Prompt
    retrieved: Retrieved
    citations: Citations
    model_revision: str
    completion_tokens: int
    finish_reason: str
    latency_ms: float
    recorded: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # seconds by stage


def contextlm_fields(answer: Answer) -> dict[str, Any]:
    """What only the gateway knows about an answer: shared by both APIs."""
    return {
        "query_id": str(answer.query_id),
        "citations": [c.as_dict() for c in answer.citations.cited],
        "invalid_citations": answer.citations.invalid,
        "model_revision": answer.model_revision,
        "index_version": answer.retrieved.index_version,
        "context": {
            "chunks": len(answer.prompt.chunks),
            "dropped": len(answer.prompt.dropped),
            "tokens": answer.prompt.context_tokens,
        },
        "recorded": answer.recorded,
    }


def usage(answer: Answer) -> dict[str, int]:
    prompt = answer.prompt.prompt_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": prompt + answer.completion_tokens,
    }


def query_body(answer: Answer) -> dict[str, Any]:
    return {
        "answer": answer.text,
        **contextlm_fields(answer),
        "finish_reason": answer.finish_reason,
        "usage": usage(answer),
    }


def server_timing(timings: dict[str, float], total: float) -> str:
    """A Server-Timing header (W3C): where an answer's time went, in milliseconds, so a
    client or a browser's network panel can tell the gateway's share from the model's."""
    parts = [f"{stage};dur={seconds * 1000:.2f}" for stage, seconds in timings.items()]
    return ", ".join([*parts, f"total;dur={total * 1000:.2f}"])


def completion_id(query_id: uuid.UUID) -> str:
    return f"chatcmpl-{query_id.hex}"


def chat_body(answer: Answer, *, model: str) -> dict[str, Any]:
    return {
        "id": completion_id(answer.query_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": usage(answer),
        "contextlm": contextlm_fields(answer),
    }


def chat_chunk(
    query_id: uuid.UUID,
    *,
    model: str,
    created: int,
    delta: dict[str, str],
    finish_reason: str | None = None,
) -> dict[str, Any]:
    return {
        "id": completion_id(query_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
