"""Citations: each `[n]` in an answer mapped back to the chunk numbered n in the prompt.

Markers the prompt never had (`[7]` with five chunks, `[0]`) are not silently dropped:
they are returned apart as invalid, so a client can flag the answer and training can
learn from it. `[1, 3]` and `[1][3]` both cite two chunks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .prompting import ContextChunk

MARKER = re.compile(r"\[(\d{1,4}(?:\s*[,;]\s*\d{1,4})*)\]")
EXCERPT_CHARS = 240


@dataclass(frozen=True)
class Citation:
    n: int
    chunk_id: str
    doc_id: str
    uri: str
    excerpt: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Citations:
    cited: list[Citation]  # in order of first mention
    invalid: list[int]  # markers that name no chunk of the prompt

    @property
    def chunk_ids(self) -> list[str]:
        return [c.chunk_id for c in self.cited]


def markers(answer: str) -> list[int]:
    """Every number cited, once, in order of first mention."""
    seen: dict[int, None] = {}
    for match in MARKER.finditer(answer):
        for part in re.split(r"[,;]", match.group(1)):
            seen.setdefault(int(part.strip()), None)
    return list(seen)


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + "…"


def map_citations(answer: str, chunks: Sequence[ContextChunk]) -> Citations:
    cited: list[Citation] = []
    invalid: list[int] = []
    for n in markers(answer):
        if 1 <= n <= len(chunks):
            chunk = chunks[n - 1]
            cited.append(Citation(n, chunk.chunk_id, chunk.doc_id, chunk.uri, excerpt(chunk.text)))
        else:
            invalid.append(n)
    return Citations(cited=cited, invalid=invalid)
