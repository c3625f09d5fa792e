"""Turn one document's bytes into text sections (heading path + body), one library per
format: pypdf for PDF, beautifulsoup4 for HTML, markdown-it-py for Markdown.

Every function here works on one document that is already bounded in size by
`maxDocumentBytes`; what a document may *expand* to (gzip, PDF streams, extracted
text) is bounded by `Limits.expansion_cap`, so a compression bomb fails that document
instead of the process. Encoding rule: bytes must be UTF-8 unless the document
declares otherwise (a byte-order mark, or an HTML `<meta charset>`); anything else is
listed as failed rather than decoded into mojibake that would then be embedded.
"""

from __future__ import annotations

import functools
import io
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.token import Token

Format = Literal["pdf", "html", "markdown", "text"]
MiB = 1024 * 1024
# A document may expand (decompress, extract) to at most this many times its size limit,
# and never beyond an absolute ceiling that keeps one document's text in memory small.
EXPANSION_FACTOR = 20
EXPANSION_CEILING = 256 * MiB

SUFFIXES: dict[str, Format] = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdown": "markdown",
    ".txt": "text",
    ".text": "text",
    "": "text",  # extensionless files (README, ConfigMap keys) are read as plain text
}
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")


class ExtractionError(Exception):
    """This document cannot be read; the message is the reason listed as failed."""


@dataclass(frozen=True)
class Limits:
    max_document_bytes: int

    @property
    def expansion_cap(self) -> int:
        return min(EXPANSION_FACTOR * self.max_document_bytes, EXPANSION_CEILING)


@dataclass(frozen=True)
class Section:
    """A run of text under one heading path (empty for unstructured documents)."""

    heading: tuple[str, ...]
    text: str


def detect_format(name: str) -> tuple[Format | None, bool]:
    """The format a file name implies, and whether it is gzip-compressed."""
    path = PurePosixPath(name.lower())
    gzipped = path.suffix == ".gz"
    if gzipped:
        path = path.with_suffix("")
    return SUFFIXES.get(path.suffix), gzipped


def gunzip(data: bytes, *, cap: int) -> bytes:
    """Decompress gzip data in bounded steps; more than `cap` bytes out is a bomb."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = bytearray()
    pending = data
    try:
        while pending and not inflater.eof:
            out += inflater.decompress(pending, cap + 1 - len(out))
            if len(out) > cap:
                raise ExtractionError(f"compression bomb: decompresses to more than {cap} bytes")
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise ExtractionError(f"corrupt gzip data: {exc}") from exc
    if not inflater.eof:
        raise ExtractionError("corrupt gzip data: truncated stream")
    return bytes(out)


def decode_text(data: bytes, *, encoding: str | None = None) -> str:
    """UTF-8 (or a declared encoding / BOM), strictly: undecodable bytes fail the document."""
    if data.startswith(b"\xef\xbb\xbf"):
        encoding, data = "utf-8", data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    try:
        text = data.decode(encoding or "utf-8")
    except UnicodeDecodeError as exc:
        raise ExtractionError(
            f"not valid {exc.encoding} text (byte {exc.start}); save it as UTF-8"
        ) from exc
    except LookupError as exc:
        raise ExtractionError(f"unknown declared encoding {encoding!r}") from exc
    if "\x00" in text:
        raise ExtractionError("binary content (NUL bytes) in a text document")
    return text


def clean(text: str) -> str:
    """Drop control characters and collapse runs of blank lines."""
    text = CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return BLANK_LINES.sub("\n\n", text).strip()


def extract(data: bytes | str, fmt: Format, *, limits: Limits) -> list[Section]:
    """Sections of one document, or ExtractionError with the reason it cannot be read."""
    if fmt == "pdf":
        if isinstance(data, str):
            raise ExtractionError("a PDF must be given as bytes")
        sections = extract_pdf(data, limits=limits)
    elif fmt == "html":
        sections = extract_html(data)
    elif fmt == "markdown":
        sections = extract_markdown(data if isinstance(data, str) else decode_text(data))
    else:
        sections = [Section((), clean(data if isinstance(data, str) else decode_text(data)))]
    sections = [s for s in sections if s.text]
    if not sections:
        raise ExtractionError("no text could be extracted")
    if sum(len(s.text) for s in sections) > limits.expansion_cap:
        raise ExtractionError(f"extracted text exceeds {limits.expansion_cap} characters")
    return sections


# PDF ------------------------------------------------------------------------------


def extract_pdf(data: bytes, *, limits: Limits) -> list[Section]:
    """Text of every page; pypdf's own decompression limits are lowered to our cap."""
    import logging

    import pypdf
    from pypdf.errors import LimitReachedError

    if not data.lstrip()[:5] == b"%PDF-":
        raise ExtractionError("corrupt PDF: no %PDF- header")
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # it warns per malformed object
    cap = limits.expansion_cap
    pages: list[str] = []
    total = 0
    try:
        with pypdf.apply_configuration(
            zlib_maximum_output_length=cap,
            lzw_maximum_output_length=cap,
            run_length_maximum_output_length=cap,
            brotli_maximum_output_length=cap,
            array_based_stream_maximum_output_length=cap,
            maximum_declared_stream_length=cap,
            jbig2dec_binary=None,  # never run an external decoder on untrusted input
        ):
            reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted and not reader.decrypt(""):
                raise ExtractionError("encrypted PDF (password required)")
            for page in reader.pages:
                text = page.extract_text() or ""
                total += len(text)
                if total > cap:
                    raise ExtractionError(f"extracted text exceeds {cap} characters")
                pages.append(clean(text))
    except ExtractionError:
        raise
    except LimitReachedError as exc:
        raise ExtractionError(f"compression bomb: {exc}") from exc
    except Exception as exc:  # pypdf raises many types on malformed input
        raise ExtractionError(f"corrupt PDF: {type(exc).__name__}: {exc}") from exc
    return [Section((), "\n\n".join(p for p in pages if p))]


# HTML -----------------------------------------------------------------------------

HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
DROPPED = ("script", "style", "noscript", "template", "svg", "head")
# Elements that start a new line; everything else (b, a, span, ...) flows inline.
BLOCKS = (
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
    "figcaption", "figure", "footer", "form", "header", "hr", "li", "main", "nav", "ol",
    "p", "pre", "section", "table", "tr", "ul",
)  # fmt: skip
CELLS = ("td", "th")
MARK = "\x00"  # cannot occur in decoded text: separates heading markers from body text


def extract_html(data: bytes | str) -> list[Section]:
    """Visible text split at h1-h6 into sections carrying their heading path."""
    from bs4 import BeautifulSoup
    from bs4.dammit import EncodingDetector

    if isinstance(data, bytes):
        declared = EncodingDetector.find_declared_encoding(data, is_html=True)
        data = decode_text(data, encoding=declared)
    soup = BeautifulSoup(data.replace(MARK, ""), "html.parser")
    for tag in soup.find_all(DROPPED):
        tag.decompose()
    for tag in soup.find_all(HEADINGS):
        title = " ".join(tag.get_text(" ").split())
        tag.replace_with(f"\n{MARK}{tag.name[1]}{title}{MARK}\n")
    for tag in soup.find_all(BLOCKS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    for tag in soup.find_all(CELLS):
        tag.insert_after(" | ")
    parts = soup.get_text().split(MARK)
    # parts alternate: body, heading marker, body, heading marker, body ...
    path = HeadingPath()
    sections = [Section((), _html_body(parts[0]))]
    for marker, body in zip(parts[1::2], parts[2::2], strict=False):
        sections.append(Section(path.enter(int(marker[0]), marker[1:]), _html_body(body)))
    return sections


def _html_body(text: str) -> str:
    """HTML collapses whitespace; block boundaries (blank lines) are what remains."""
    lines = (" ".join(line.split()).removesuffix(" |") for line in text.split("\n"))
    return clean("\n".join(lines))


# Markdown -------------------------------------------------------------------------


class HeadingPath:
    """The chain of headings above the current position (`Returns > Refunds`)."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> tuple[str, ...]:
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        if title:
            self.stack.append((level, title))
        return tuple(t for _, t in self.stack)


def extract_markdown(text: str) -> list[Section]:
    """Sections split at ATX/setext headings; inline markup reduced to its text."""
    tokens = _markdown_parser().parse(text)
    path = HeadingPath()
    sections: list[Section] = []
    heading: tuple[str, ...] = ()
    blocks: list[str] = []
    for kind, value in _markdown_blocks(tokens):
        if kind == "heading":
            sections.append(Section(heading, clean("\n\n".join(blocks))))
            heading, blocks = path.enter(int(value[0]), value[1:]), []
        else:
            blocks.append(value)
    sections.append(Section(heading, clean("\n\n".join(blocks))))
    return sections


@functools.cache
def _markdown_parser() -> MarkdownIt:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table")


def _markdown_blocks(tokens: Iterable[Token]) -> Iterator[tuple[str, str]]:
    """("heading", "<level><title>") and ("text", block) in document order."""
    level = 0
    row: list[str] | None = None
    bullet = False
    for tok in tokens:
        if tok.type == "heading_open":
            level = int(tok.tag[1])
        elif tok.type == "heading_close":
            level = 0
        elif tok.type == "list_item_open":
            bullet = True
        elif tok.type == "tr_open":
            row = []
        elif tok.type == "tr_close" and row is not None:
            yield "text", " | ".join(row)
            row = None
        elif tok.type == "inline":
            content = _inline_text(tok)
            if level:
                yield "heading", f"{level}{' '.join(content.split())}"
            elif row is not None:
                row.append(content)
            else:
                yield "text", f"- {content}" if bullet else content
                bullet = False
        elif tok.type in ("fence", "code_block"):
            yield "text", tok.content.rstrip("\n")
        elif tok.type == "html_block":
            yield "text", "\n\n".join(s.text for s in extract_html(tok.content) if s.text)


def _inline_text(tok: Token) -> str:
    out: list[str] = []
    for child in tok.children or []:
        if child.type in ("text", "code_inline"):
            out.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            out.append("\n")
        elif child.type == "image":
            out.append(_inline_text(child))
        elif child.type == "html_inline":
            continue
    return "".join(out)
