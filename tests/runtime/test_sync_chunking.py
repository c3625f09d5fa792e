"""Chunking in tokens of all-MiniLM-L6-v2's real tokenizer."""

from __future__ import annotations

import itertools
import random
import re

import pytest
from sync_support import tokenizer

from contextlm.runtime.chunking import ChunkText, Piece, Strategy, chunk_sections, windows
from contextlm.runtime.extract import Limits, Section, extract

WORDS = [
    *("refund", "exchange", "parcel", "warehouse", "courier", "invoice", "receipt"),
    *("unbelievably", "tokenization", "Kubernetes", "naïve", "café", "résumé", "42"),
    *("3.14", "e-mail", "don't", "(bracketed)", "supercalifragilisticexpialidocious"),
]


def prose(seed: int, words: int) -> str:
    rnd = random.Random(seed)
    out = []
    for i in range(words):
        out.append(rnd.choice(WORDS) + ("." if i % 11 == 10 else ""))
    return " ".join(out)


def chunk(sections: list[Section], strategy: Strategy, size: int, overlap: int) -> list[ChunkText]:
    return list(
        chunk_sections(
            sections, tokenizer=tokenizer(), strategy=strategy, size=size, overlap=overlap
        )
    )


def spans(text: str, chunks: list[ChunkText]) -> list[tuple[int, int]]:
    """Where each chunk's text lies in `text` (chunks are slices, in order)."""
    out: list[tuple[int, int]] = []
    for c in chunks:
        start = text.index(c.text, out[-1][0] + 1 if out else 0)
        out.append((start, start + len(c.text)))
    return out


@pytest.mark.parametrize(("size", "overlap"), [(16, 0), (16, 8), (32, 4), (64, 16), (256, 32)])
def test_token_windows_fit_overlap_and_cover_the_text(size: int, overlap: int) -> None:
    text = prose(size, 600)
    chunks = chunk([Section((), text)], "tokens", size, overlap)
    assert len(chunks) > 1
    counts = [tokenizer().count(c.text) for c in chunks]
    assert max(counts) <= size
    assert sum(counts) / len(counts) > size * 0.6  # windows are filled, not fragmented
    located = spans(text, chunks)
    assert located[0][0] == 0 and located[-1][1] == len(text)  # nothing lost at the ends
    for (_, prev_end), (start, _) in itertools.pairwise(located):
        if start >= prev_end:  # no overlap: only whitespace may lie between
            assert overlap == 0 or tokenizer().count(text[prev_end:start]) == 0
            assert text[prev_end:start].strip() == ""
        else:  # the next chunk repeats the end of this one, whole words only
            shared = text[start:prev_end]
            assert 0 < tokenizer().count(shared) <= overlap
        if overlap >= 8 and start >= prev_end:  # no overlap only if the last word is too big
            last_word = re.findall(r"\w+", text[:prev_end])[-1]
            assert tokenizer().count(last_word) > overlap


def test_chunk_text_is_a_slice_of_the_document_not_a_decode() -> None:
    text = "Naïve Café owners in Zürich said: “Don't panic!” " * 20
    chunks = chunk([Section((), text)], "tokens", 16, 4)
    for c in chunks:
        assert c.text in text  # case, accents and punctuation kept


def test_markdown_sections_carry_their_heading_path_and_never_cross_it() -> None:
    markdown = "\n\n".join(
        [
            "# Returns",
            prose(1, 40) + " RETURNSMARK",
            "## Refunds",
            prose(2, 120) + " REFUNDSMARK",
            "## Exchanges",
            "Exchanges are free. EXCHANGESMARK",
        ]
    )
    sections = extract(markdown, "markdown", limits=Limits(1024 * 1024))
    chunks = chunk(sections, "markdown-sections", 32, 8)
    marks = {"RETURNSMARK": "Returns", "REFUNDSMARK": "Returns > Refunds"}
    marks["EXCHANGESMARK"] = "Returns > Exchanges"
    headings = [c.heading for c in chunks]
    assert headings[0] == "Returns" and headings[-1] == "Returns > Exchanges"
    assert headings.count("Returns > Refunds") > 2  # a long section spans several chunks
    for c in chunks:
        assert c.text.startswith(c.heading + "\n\n")
        assert tokenizer().count(c.text) <= 32
        body = c.text[len(c.heading) + 2 :]
        for mark, heading in marks.items():
            if mark in body:
                assert c.heading == heading
        # words of one section never appear under another section's heading
        assert not ("Exchanges are free" in body and c.heading != "Returns > Exchanges")
    for mark in marks:
        assert sum(mark in c.text for c in chunks) == 1


def test_tokens_strategy_keeps_headings_as_text_but_no_heading_path() -> None:
    sections = [Section(("Returns",), "Return it."), Section(("Returns", "Refunds"), "Cash.")]
    (only,) = chunk(sections, "tokens", 64, 8)
    assert only == ChunkText(heading="", text="Returns\n\nReturn it.\n\nRefunds\n\nCash.")


def test_a_deep_heading_path_is_cut_to_half_the_chunk() -> None:
    heading = tuple(f"Level {i} heading with several words" for i in range(10))
    chunks = chunk([Section(heading, prose(3, 100))], "markdown-sections", 32, 4)
    for c in chunks:
        prefix = c.text.split("\n\n")[0]
        assert tokenizer().count(prefix) <= 16
        assert tokenizer().count(c.text) <= 32
        assert c.heading == " > ".join(heading)  # the full path stays in metadata


def test_a_word_longer_than_a_chunk_is_split_by_token() -> None:
    word = "pneumonoultramicroscopicsilicovolcanoconiosis" * 2  # wordpiece: 20+ tokens
    assert tokenizer().count(word) > 16
    chunks = chunk([Section((), f"start {word} end")], "tokens", 16, 0)
    assert "".join(c.text.replace(" ", "") for c in chunks) == f"start{word}end"


def test_windows_progress_even_when_overlap_could_repeat_a_window() -> None:
    pieces = [Piece(i * 2, i * 2 + 1, 5) for i in range(10)]
    spans = list(windows(pieces, budget=10, overlap=9))
    starts = [s for s, _ in spans]
    assert starts == sorted(set(starts))  # strictly advancing
    assert spans[-1][1] == pieces[-1].end
    assert all((end - start) // 2 + 1 <= 2 for start, end in spans)  # two 5-token words


def test_chunking_is_deterministic() -> None:
    sections = [Section(("A",), prose(9, 300))]
    assert chunk(sections, "markdown-sections", 48, 8) == chunk(
        sections, "markdown-sections", 48, 8
    )
