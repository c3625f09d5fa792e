"""Prompt building within the model's context budget.

The prompt is the spec's system prompt plus its template, with `{context}` replaced by
numbered chunks (`[n] (source: uri) text`) and `{question}` by the question. Chunks come
in the retriever's rank order; at most `maxChunks` are used, and while the context is over
`maxContextTokens` (counted with the served model's own tokenizer) the lowest-ranked chunk
is dropped. The text sent to the model is rendered with the tokenizer's chat template when
it has one, because Triton's TensorRT-LLM ensemble tokenizes the raw text it is given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..api.contextual_deployment import PromptSpec
    from .store import ArtifactStore

CONTEXT_SEPARATOR = "\n\n"
_PLACEHOLDER = re.compile(r"\{(context|question)\}")


class Tokenizer(Protocol):
    """What the gateway needs from the model's tokenizer."""

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text, without special tokens."""

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The exact text sent to the model for a conversation."""


@dataclass(frozen=True)
class ContextChunk:
    """A retrieved chunk, in the retriever's rank order."""

    chunk_id: str
    doc_id: str
    uri: str
    text: str
    rank: int
    score: float | None = None

    @classmethod
    def from_retriever(cls, result: dict[str, Any]) -> ContextChunk:
        return cls(
            chunk_id=str(result["chunkId"]),
            doc_id=str(result["docId"]),
            uri=str(result.get("uri") or result["docId"]),
            text=str(result["text"]),
            rank=int(result["rank"]),
            score=None if result.get("score") is None else float(result["score"]),
        )


@dataclass(frozen=True)
class Prompt:
    text: str  # exactly what the model is sent
    messages: list[dict[str, str]]
    chunks: list[ContextChunk]  # in the prompt; chunks[i] is [i + 1]
    dropped: list[ContextChunk] = field(default_factory=list)
    context_tokens: int = 0
    prompt_tokens: int = 0


def format_chunk(n: int, chunk: ContextChunk) -> str:
    return f"[{n}] (source: {chunk.uri}) {chunk.text}"


def format_context(chunks: Sequence[ContextChunk]) -> str:
    return CONTEXT_SEPARATOR.join(format_chunk(n, c) for n, c in enumerate(chunks, start=1))


def fit_chunks(
    chunks: Sequence[ContextChunk], *, max_chunks: int, max_tokens: int, tokenizer: Tokenizer
) -> tuple[list[ContextChunk], int]:
    """The longest rank-order prefix of `chunks` (at most `max_chunks`) whose formatted
    context is within `max_tokens`; and that context's token count.

    Per-chunk counts pick the candidate (one batched tokenizer call), then the joined
    context is counted as a whole, since tokens at the joins need not add up exactly."""
    kept = list(chunks[:max_chunks])
    if not kept:
        return [], 0
    entries = [format_chunk(n, c) for n, c in enumerate(kept, start=1)]
    costs = tokenizer.count([e + CONTEXT_SEPARATOR for e in entries])
    total = 0
    fits = 0
    for cost in costs:
        if total + cost > max_tokens:
            break
        total += cost
        fits += 1
    kept = kept[:fits]
    while kept:
        tokens = tokenizer.count([format_context(kept)])[0]
        if tokens <= max_tokens:
            return kept, tokens
        kept.pop()
    return [], 0


def fill_template(template: str, *, context: str, question: str) -> str:
    """Replace {context} and {question} in one pass: braces elsewhere in the template, or
    a placeholder typed inside the question, stay as they are."""
    values = {"context": context, "question": question}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def build_prompt(
    spec: PromptSpec,
    *,
    question: str,
    chunks: Sequence[ContextChunk],
    tokenizer: Tokenizer,
    history: Sequence[dict[str, str]] = (),
    system_extra: str = "",
) -> Prompt:
    """The prompt for `question` over ranked `chunks`.

    `history` holds earlier turns of a chat ({role: user|assistant, content}); a client's
    own system message is appended to the spec's, which always comes first."""
    kept, context_tokens = fit_chunks(
        chunks, max_chunks=spec.max_chunks, max_tokens=spec.max_context_tokens, tokenizer=tokenizer
    )
    system = spec.system if not system_extra else f"{spec.system}\n\n{system_extra}"
    user = fill_template(spec.template, context=format_context(kept), question=question)
    messages = [{"role": "system", "content": system}] if system else []
    messages += [dict(m) for m in history]
    messages.append({"role": "user", "content": user})
    text = tokenizer.render(messages)
    return Prompt(
        text=text,
        messages=messages,
        chunks=kept,
        dropped=list(chunks[len(kept) :]),
        context_tokens=context_tokens,
        prompt_tokens=tokenizer.count([text])[0],
    )


# The model's tokenizer ------------------------------------------------------------


def render_plain(messages: Sequence[dict[str, str]]) -> str:
    """For models without a chat template: the system text, then the turns."""
    parts = []
    for message in messages:
        if message["role"] in ("system", "user"):
            parts.append(message["content"])
        else:
            parts.append(f"Assistant: {message['content']}")
    return "\n\n".join(parts)


class HFTokenizer:
    """A transformers tokenizer loaded from disk (never from a hub)."""

    def __init__(self, backend: Any, *, chat_template: bool = True) -> None:
        self.backend = backend
        self.use_template = chat_template and bool(getattr(backend, "chat_template", None))
        # The Rust tokenizer itself counts in a third of the time of the transformers
        # wrapper; a copy, because a tokenizer.json may carry truncation and padding
        # settings (MiniLM's pads to 128) that a count must not apply.
        self.fast: Any = None
        if getattr(backend, "backend_tokenizer", None) is not None:
            from tokenizers import Tokenizer as RustTokenizer

            self.fast = RustTokenizer.from_str(backend.backend_tokenizer.to_str())
            self.fast.no_truncation()
            self.fast.no_padding()

    @classmethod
    def load(cls, directory: Path, *, chat_template: bool = True) -> HFTokenizer:
        from transformers import AutoTokenizer

        backend = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        return cls(backend, chat_template=chat_template)

    def count(self, texts: Sequence[str]) -> list[int]:
        if self.fast is not None:
            encoded = self.fast.encode_batch(list(texts), add_special_tokens=False)
            return [len(e.ids) for e in encoded]
        encoded = self.backend(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        if not self.use_template:
            return render_plain(messages)
        try:
            text = self.backend.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        except Exception:  # noqa: BLE001 - e.g. a template that refuses a system role
            merged = _system_into_user(messages)
            text = self.backend.apply_chat_template(
                merged, tokenize=False, add_generation_prompt=True
            )
        return str(text)


def _system_into_user(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and rest:
        rest[0]["content"] = "\n\n".join([*system, rest[0]["content"]])
    return rest


def load_tokenizer(
    name: str, *, store: ArtifactStore | None, cache_dir: str, chat_template: bool = True
) -> HFTokenizer:
    """The served model's tokenizer: a directory, models/<name> in the store, a .gguf
    file or a packaged model name."""
    from .models import resolve_model_files

    cache = Path(cache_dir).expanduser()
    files = resolve_model_files(name, store=store, cache_dir=cache)
    directory = files.directory
    if files.gguf_file:
        directory = gguf_tokenizer(files.directory / files.gguf_file, cache)
    return HFTokenizer.load(directory, chat_template=chat_template)


def gguf_tokenizer(source: Path, cache: Path) -> Path:
    """Extract a GGUF file's tokenizer once into the cache.

    transformers rebuilds it from the GGUF vocabulary on every load, tens of seconds on a
    busy CPU; the saved copy loads in well under one."""
    import hashlib
    import os
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = cache / "tokenizers" / f"{source.stem}-{key.hexdigest()[:12]}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        tokenizer.save_pretrained(str(scratch))
        (scratch / ".complete").touch()
        try:
            os.rename(scratch, target)  # atomic; another process may have won the race
        except OSError:
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
