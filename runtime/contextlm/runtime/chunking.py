"""Cut sections into chunks measured in tokens of the embedding model's tokenizer.

Windows are built from whole words (as the tokenizer's pre-tokenizer splits them), so
re-tokenizing a chunk's text gives the same tokens that were counted for it: the text of
a chunk is a plain slice of the document, never a decode of token ids (which would lose
case, accents and spacing). The tokenizer runs over a document a few kilobytes at a
time, so a long document never holds all its tokens in memory at once.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

from .extract import Section

if TYPE_CHECKING:
    import tokenizers

    from .store import ArtifactStore

Strategy = Literal["tokens", "markdown-sections"]
SEGMENT_CHARS = 4096  # text handed to the tokenizer at once (cut at whitespace)
HARD_SEGMENT_CHARS = 65536  # cut even without whitespace past this
BATCH = 32
HEADING_SEPARATOR = " > "
WHITESPACE = re.compile(r"\s")


class Piece(NamedTuple):
    """A word of the text (or one token of a word too long for any window)."""

    start: int
    end: int
    tokens: int


@dataclass(frozen=True)
class ChunkText:
    heading: str
    text: str


class Tokenizer:
    """Token counting by word with a `tokenizers` (Rust) tokenizer, specials excluded."""

    def __init__(self, backend: tokenizers.Tokenizer, *, name: str) -> None:
        self.backend = backend
        self.name = name

    def count(self, text: str) -> int:
        return len(self.backend.encode(text, add_special_tokens=False).ids)

    def pieces(self, text: str, *, limit: int) -> Iterator[Piece]:
        """Words of `text` in order; a word of more than `limit` tokens is split by token."""
        batch: list[tuple[int, str]] = []
        for start, segment in _segments(text):
            batch.append((start, segment))
            if len(batch) == BATCH:
                yield from self._encode(batch, limit)
                batch = []
        if batch:
            yield from self._encode(batch, limit)

    def _encode(self, batch: list[tuple[int, str]], limit: int) -> Iterator[Piece]:
        encodings = self.backend.encode_batch([s for _, s in batch], add_special_tokens=False)
        for (base, _), enc in zip(batch, encodings, strict=True):
            word_ids, offsets = enc.word_ids, enc.offsets
            i, n = 0, len(word_ids)
            while i < n:  # runs of tokens with the same word id are one word
                j = i + 1
                while j < n and word_ids[j] == word_ids[i]:
                    j += 1
                if j - i <= limit:
                    yield Piece(base + offsets[i][0], base + offsets[j - 1][1], j - i)
                else:
                    for start, end in offsets[i:j]:
                        yield Piece(base + start, base + end, 1)
                i = j


def _segments(text: str) -> Iterator[tuple[int, str]]:
    """(offset, slice) of `text`, each ending at whitespace so no word is cut."""
    pos = 0
    while pos < len(text):
        end = pos + SEGMENT_CHARS
        if end < len(text):
            match = WHITESPACE.search(text, end, pos + HARD_SEGMENT_CHARS)
            end = match.start() if match else pos + HARD_SEGMENT_CHARS
        yield pos, text[pos:end]
        pos = end


def windows(pieces: Iterable[Piece], *, budget: int, overlap: int) -> Iterator[tuple[int, int]]:
    """Character spans of windows of at most `budget` tokens; consecutive windows share
    whole words totalling at most `overlap` tokens, and each adds at least one word."""
    window: deque[Piece] = deque()
    total = 0
    for piece in pieces:
        if window and total + piece.tokens > budget:
            yield window[0].start, window[-1].end
            kept: deque[Piece] = deque()
            shared = 0
            for prev in reversed(window):
                if shared + prev.tokens > overlap or len(kept) + 1 >= len(window):
                    break
                kept.appendleft(prev)
                shared += prev.tokens
            window, total = kept, shared
            while window and total + piece.tokens > budget:
                total -= window.popleft().tokens
        window.append(piece)
        total += piece.tokens
    if window:
        yield window[0].start, window[-1].end


def chunk_sections(
    sections: Iterable[Section],
    *,
    tokenizer: Tokenizer,
    strategy: Strategy,
    size: int,
    overlap: int,
) -> Iterator[ChunkText]:
    """Chunks of one document, in order.

    `tokens`: the whole document (headings as lines) in fixed windows.
    `markdown-sections`: windows never cross a heading, and each chunk's text starts with
    its heading path, counted within `size`, so the embedding sees where it belongs.
    """
    if strategy == "tokens":
        text = "\n\n".join(
            f"{s.heading[-1]}\n\n{s.text}" if s.heading else s.text for s in sections
        )
        yield from _chunks(
            text, prefix="", heading="", tokenizer=tokenizer, size=size, overlap=overlap
        )
        return
    for section in sections:
        heading = HEADING_SEPARATOR.join(section.heading)
        prefix = _prefix(heading, tokenizer=tokenizer, max_tokens=size // 2)
        yield from _chunks(
            section.text,
            prefix=prefix,
            heading=heading,
            tokenizer=tokenizer,
            size=size,
            overlap=overlap,
        )


def _prefix(heading: str, *, tokenizer: Tokenizer, max_tokens: int) -> str:
    """`heading` plus a blank line, cut to `max_tokens` so a deep path leaves room."""
    if not heading:
        return ""
    end, used = 0, 0
    for piece in tokenizer.pieces(heading, limit=max_tokens):
        if used + piece.tokens > max_tokens:
            break
        end, used = piece.end, used + piece.tokens
    return heading[:end] + "\n\n"


def _chunks(
    text: str, *, prefix: str, heading: str, tokenizer: Tokenizer, size: int, overlap: int
) -> Iterator[ChunkText]:
    budget = size - (tokenizer.count(prefix) if prefix else 0)
    pieces = tokenizer.pieces(text, limit=budget)
    for start, end in windows(pieces, budget=budget, overlap=min(overlap, budget - 1)):
        yield ChunkText(heading=heading, text=prefix + text[start:end])


def load_tokenizer(name: str, *, store: ArtifactStore | None = None) -> Tokenizer:
    """The fast tokenizer of model `name`, found on disk (never fetched from a hub)."""
    import copy
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a path is given; never ask a hub
    from transformers import AutoTokenizer

    from .models import resolve_model

    loaded = AutoTokenizer.from_pretrained(str(resolve_model(name, store=store)))
    if not getattr(loaded, "is_fast", False):
        raise ValueError(f"tokenizer of {name} has no fast (Rust) implementation")
    backend = copy.deepcopy(loaded.backend_tokenizer)
    backend.no_padding()
    backend.no_truncation()
    return Tokenizer(backend, name=name)
