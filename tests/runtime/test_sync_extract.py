"""Extraction of each format, and the limits that make hostile documents fail alone."""

from __future__ import annotations

import gzip

import pytest
from sync_support import make_pdf

from contextlm.runtime.extract import (
    ExtractionError,
    Limits,
    Section,
    decode_text,
    detect_format,
    extract,
    gunzip,
)

LIMITS = Limits(max_document_bytes=1024 * 1024)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("guide.pdf", ("pdf", False)),
        ("a/b/Page.HTML", ("html", False)),
        ("index.htm", ("html", False)),
        ("notes.md", ("markdown", False)),
        ("notes.markdown", ("markdown", False)),
        ("notes.txt", ("text", False)),
        ("README", ("text", False)),
        ("notes.txt.gz", ("text", True)),
        ("notes.md.gz", ("markdown", True)),
        ("image.png", (None, False)),
        ("archive.tar.gz", (None, True)),
    ],
)
def test_format_comes_from_the_extension(name: str, expected: tuple[str | None, bool]) -> None:
    assert detect_format(name) == expected


# Text and encodings -------------------------------------------------------------------


def test_plain_text_is_one_section_without_heading() -> None:
    text = "First line.\r\nSecond line.\n\n\n\nAfter blank lines.\x07"
    assert extract(text.encode(), "text", limits=LIMITS) == [
        Section((), "First line.\nSecond line.\n\nAfter blank lines.")
    ]


def test_utf8_and_declared_encodings_decode() -> None:
    assert decode_text("café".encode()) == "café"
    assert decode_text(b"\xef\xbb\xbf" + "café".encode()) == "café"  # UTF-8 BOM dropped
    assert decode_text("café".encode("utf-16")) == "café"  # BOM says UTF-16
    assert decode_text("café".encode("latin-1"), encoding="iso-8859-1") == "café"


def test_non_utf8_text_fails_instead_of_becoming_mojibake() -> None:
    with pytest.raises(ExtractionError, match=r"not valid utf-8 text \(byte 3\)"):
        extract("café au lait".encode("latin-1"), "text", limits=LIMITS)


def test_binary_content_in_a_text_file_fails() -> None:
    with pytest.raises(ExtractionError, match="binary content"):
        extract(b"abc\x00\x01\x02def", "text", limits=LIMITS)


def test_whitespace_only_document_has_no_text() -> None:
    with pytest.raises(ExtractionError, match="no text"):
        extract(b"  \n\n\t ", "text", limits=LIMITS)


# Markdown ------------------------------------------------------------------------------

MARKDOWN = """\
Intro before any heading.

# Returns

You can return *most* items within **30 days**; see `policy.pdf`.

## Refunds

Refunds go to the [original payment](https://example.invalid) method.

- first bullet
- second bullet

| Method | Days |
|--------|------|
| Card   | 5    |

### Card refunds

```
card: 5 days
```

## Exchanges

Exchanges are free.

Shipping
========

Setext heading body.
"""


def test_markdown_keeps_heading_structure() -> None:
    sections = extract(MARKDOWN.encode(), "markdown", limits=LIMITS)
    assert [s.heading for s in sections] == [
        (),
        ("Returns",),
        ("Returns", "Refunds"),
        ("Returns", "Refunds", "Card refunds"),
        ("Returns", "Exchanges"),
        ("Shipping",),
    ]
    by_heading = {s.heading: s.text for s in sections}
    assert by_heading[()] == "Intro before any heading."
    assert by_heading[("Returns",)] == ("You can return most items within 30 days; see policy.pdf.")
    refunds = by_heading[("Returns", "Refunds")]
    assert "Refunds go to the original payment method." in refunds
    assert "- first bullet" in refunds and "- second bullet" in refunds
    assert "Method | Days" in refunds and "Card | 5" in refunds
    assert "https://" not in refunds  # link targets are markup, not text
    assert by_heading[("Returns", "Refunds", "Card refunds")] == "card: 5 days"
    assert by_heading[("Shipping",)] == "Setext heading body."


def test_markdown_sibling_heading_replaces_its_level() -> None:
    sections = extract(b"# A\n\na\n\n## B\n\nb\n\n# C\n\nc\n", "markdown", limits=LIMITS)
    assert [s.heading for s in sections] == [("A",), ("A", "B"), ("C",)]


# HTML ----------------------------------------------------------------------------------

HTML = b"""<!doctype html><html><head><title>T</title><style>p{color:red}</style>
<script>var secret = "not text";</script></head><body>
<p>Opening paragraph.</p>
<h1>Returns</h1><p>Return within <b>30</b> days.</p>
<h2>Refunds <small>(cards)</small></h2><div>Refunds take five days.</div>
<ul><li>one</li><li>two</li></ul>
<h2>Exchanges</h2><p>Free.</p>
<noscript>enable js</noscript>
</body></html>"""


def test_html_text_is_split_at_headings() -> None:
    sections = extract(HTML, "html", limits=LIMITS)
    assert [(s.heading, s.text) for s in sections] == [
        ((), "Opening paragraph."),
        (("Returns",), "Return within 30 days."),
        (("Returns", "Refunds (cards)"), "Refunds take five days.\n\none\n\ntwo"),
        (("Returns", "Exchanges"), "Free."),
    ]
    text = " ".join(s.text for s in sections)
    assert "secret" not in text and "color" not in text and "enable js" not in text


def test_html_declared_charset_is_honoured() -> None:
    page = '<meta charset="iso-8859-1"><p>café</p>'.encode("latin-1")
    assert extract(page, "html", limits=LIMITS)[0].text == "café"


def test_html_undeclared_non_utf8_fails() -> None:
    with pytest.raises(ExtractionError, match="not valid utf-8"):
        extract("<p>café</p>".encode("latin-1"), "html", limits=LIMITS)


# PDF -----------------------------------------------------------------------------------


def test_pdf_text_of_every_page() -> None:
    pdf = make_pdf(["Hello (PDF) world\nsecond line", "Page two text"])
    (section,) = extract(pdf, "pdf", limits=LIMITS)
    assert section.heading == ()
    assert section.text == "Hello (PDF) world\nsecond line\n\nPage two text"


def test_uncompressed_pdf_streams_work_too() -> None:
    assert extract(make_pdf(["plain"], compress=False), "pdf", limits=LIMITS)[0].text == "plain"


@pytest.mark.parametrize(
    "data",
    [
        b"this is not a pdf at all",
        make_pdf(["truncated document"])[:120],
        b"%PDF-1.4\n" + bytes(range(256)) * 4,
    ],
    ids=["no-header", "truncated", "garbage"],
)
def test_corrupt_pdf_fails_with_a_reason(data: bytes) -> None:
    with pytest.raises(ExtractionError, match="corrupt PDF|no text"):
        extract(data, "pdf", limits=LIMITS)


def test_pdf_flate_bomb_fails_before_it_inflates() -> None:
    bomb = make_pdf(["boom"], padding=50_000_000)  # ~50 KB on disk, 50 MB inflated
    assert len(bomb) < 100 * 1024
    with pytest.raises(ExtractionError, match="compression bomb"):
        extract(bomb, "pdf", limits=Limits(max_document_bytes=100 * 1024))


def test_pdf_without_a_text_layer_has_no_text() -> None:
    with pytest.raises(ExtractionError, match="no text"):
        extract(make_pdf([""]), "pdf", limits=LIMITS)


# Compression and expansion -----------------------------------------------------------


def test_gunzip_round_trip() -> None:
    assert gunzip(gzip.compress(b"hello " * 100), cap=1000) == b"hello " * 100


def test_gzip_bomb_stops_at_the_cap() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(ExtractionError, match="compression bomb"):
        gunzip(bomb, cap=2_000_000)


@pytest.mark.parametrize("data", [b"not gzip", gzip.compress(b"x" * 1000)[:20]])
def test_corrupt_gzip_fails(data: bytes) -> None:
    with pytest.raises(ExtractionError, match="corrupt gzip"):
        gunzip(data, cap=10_000)


def test_expansion_cap_is_bounded() -> None:
    assert Limits(1024).expansion_cap == 20 * 1024
    assert Limits(1024 * 1024 * 1024).expansion_cap == 256 * 1024 * 1024


def test_extracted_text_beyond_the_cap_fails() -> None:
    with pytest.raises(ExtractionError, match="exceeds"):
        extract("word " * 10_000, "text", limits=Limits(max_document_bytes=1024))
