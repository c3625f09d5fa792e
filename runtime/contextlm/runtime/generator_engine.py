"""The model behind `contextlm generator`: load a causal LM with transformers, generate.

Everything here is synchronous and runs on the generator's one worker thread; the
servers in front talk to it through `generator.Generator`. torch and transformers are
imported inside functions so the protocol layers (and their tests) never pay for them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import GeneratorConfig
from .models import resolve_model
from .store import open_store

if TYPE_CHECKING:
    import torch

log = logging.getLogger("contextlm.generator")


class PromptError(ValueError):
    """The prompt cannot be generated from (empty, too long): the client's fault."""


@dataclass(frozen=True)
class Sampling:
    """What one request asks of the decoder. `temperature` 0 (the default) is greedy,
    as TensorRT-LLM decodes when no sampling parameter is set."""

    max_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence), "length" (max_tokens) or "cancelled"


class IncrementalText:
    """Turns generated token ids into text deltas whose concatenation is exactly the
    decode of all of them.

    Decoding token by token breaks multi-byte characters and word-initial spaces, so
    each step decodes the whole completion and emits only what extends the text already
    emitted, holding back a trailing U+FFFD (a character whose bytes are still coming).
    Written by hand because transformers' TextIteratorStreamer cuts at word boundaries
    and does not promise that its pieces add up to the non-streamed decode.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def decode(self) -> str:
        text: str = self.tokenizer.decode(
            self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.decode()
        if text.endswith("\ufffd") or not text.startswith(self.emitted):
            return ""
        delta, self.emitted = text[len(self.emitted) :], text
        return delta

    def finish(self) -> str:
        text = self.decode()
        if not text.startswith(self.emitted):
            log.warning("decoded text changed under already streamed output")
            return ""
        delta, self.emitted = text[len(self.emitted) :], text
        return delta


def _streamer(on_token: Callable[[int], None]) -> Any:
    from transformers.generation.streamers import BaseStreamer

    class TokenStreamer(BaseStreamer):
        """Hands each generated token to `on_token`; generate() puts the prompt first."""

        def __init__(self) -> None:
            self.prompt_seen = False

        def put(self, value: torch.Tensor) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            for token in value.reshape(-1).tolist():
                on_token(int(token))

        def end(self) -> None:
            pass

    return TokenStreamer()


def _stop_when(cancelled: threading.Event) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> Any:
            import torch

            return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

    return StoppingCriteriaList([Cancelled()])


class Engine:
    """One loaded model and tokenizer. Not thread-safe: one caller at a time."""

    def __init__(self, model: Any, tokenizer: Any, config: GeneratorConfig, device: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.device = device
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_token_id: int | list[int] | None = eos
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (eos[0] if isinstance(eos, list) else eos)

    def encode(self, text: str) -> list[int]:
        if self.config.chat_template and self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(text, add_special_tokens=self.config.add_special_tokens)[
                "input_ids"
            ]
        if not ids:
            raise PromptError("text_input is empty: the prompt has no tokens")
        if len(ids) > self.config.max_input_length:
            raise PromptError(
                f"the prompt has {len(ids)} tokens, more than max_input_length"
                f" {self.config.max_input_length}"
            )
        return ids

    def generate(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        *,
        on_text: Callable[[str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Completion:
        """Generate up to `sampling.max_tokens` tokens; `on_text` gets each text delta."""
        import torch
        from transformers import GenerationConfig

        cancelled = cancelled or threading.Event()
        text = IncrementalText(self.tokenizer)

        def on_token(token: int) -> None:
            delta = text.push(token)
            if delta and on_text is not None:
                on_text(delta)

        sample = sampling.temperature > 0
        generation = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=sampling.max_tokens,
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_k=(sampling.top_k or None) if sample else None,
            top_p=(sampling.top_p or None) if sample else None,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        inputs = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            self.model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                generation_config=generation,
                streamer=_streamer(on_token),
                stopping_criteria=_stop_when(cancelled),
            )
        tail = text.finish()
        if tail and on_text is not None:
            on_text(tail)
        ids = text.ids
        eos = self.eos_token_id if isinstance(self.eos_token_id, list) else [self.eos_token_id]
        if cancelled.is_set():
            finish = "cancelled"
        elif ids and ids[-1] in eos:
            finish = "stop"
        else:
            finish = "length" if len(ids) >= sampling.max_tokens else "stop"
        completion_tokens = len(ids) - (1 if finish == "stop" and ids and ids[-1] in eos else 0)
        return Completion(text.emitted, len(prompt_ids), completion_tokens, finish)


# Loading -----------------------------------------------------------------------------


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.float32 if device == "cpu" else "auto"
    return getattr(torch, name)


def load_engine(config: GeneratorConfig) -> Engine:
    """Find the weights (store, disk or a package), load the revision, merge adapters.

    The base checkpoint and trained revisions are loaded exactly as `contextlm train` and
    `contextlm evaluate` load them (`revisions.Loader`), so what was evaluated is what
    serves: a revision is its adapter merged over `adapterBase`, or its merged weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .revisions import BASE, Loader, base_checkpoint

    if config.threads:
        torch.set_num_threads(config.threads)
    cache = Path(config.cache_dir).expanduser()
    trained = config.aligned_model is not None and config.revision != BASE
    uses_store = trained or config.model.startswith("models/")
    store = open_store(config.store) if uses_store else None
    device = pick_device(config.device)
    dtype = _dtype(config.dtype, device)
    model: Any
    if trained:
        assert config.aligned_model is not None
        loader = Loader(
            store,
            namespace=config.namespace,
            model=config.aligned_model,
            base_model=config.model,
            cache_dir=cache,
        )
        model = loader.full_model(config.revision, dtype=dtype)
        directory = loader.base_dir()
    else:
        directory = base_checkpoint(config.model, store=store, cache_dir=cache)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if config.adapter:
        from peft import PeftModel

        adapter_store = open_store(config.store) if config.adapter.startswith("models/") else None
        adapter = resolve_model(config.adapter, store=adapter_store, cache_dir=cache)
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.to(device)
    model.eval()
    log.info("loaded %s (%s) on %s", config.model, config.revision, device)
    return Engine(model, tokenizer, config, device)
