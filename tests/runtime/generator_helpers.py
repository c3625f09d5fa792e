"""`contextlm generator` as a real child process on 127.0.0.1, and the tiny causal LM the
protocol tests serve so that a run costs seconds, not minutes.

The tiny model is a randomly initialised two-layer Llama with a byte-level BPE tokenizer
trained here on a few sentences: its text is gibberish, but greedy decoding is
deterministic and it exercises what a real model does (multi-byte characters split
across tokens, an end-of-sequence token, a chat template).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import CACHE, free_port

from contextlm.runtime.config import GeneratorConfig

SMOLLM = "SmolLM2-135M-Instruct"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Retrieval-augmented generation answers questions from a corpus with citations.",
    "The operator renders a Triton model repository for TensorRT-LLM engines.",
    "Feedback from users trains the next revision: thumbs up, thumbs down, corrections.",
    "Über naïve café façades — déjà vu, 東京 and emoji 🙂 are bytes too.",
]


def build_tiny_tokenizer() -> Any:
    """A byte-level BPE (GPT-2 style) trained on CORPUS, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(directory: Path, *, seed: int = 0) -> Path:
    """Save a tiny random Llama and its tokenizer to `directory` (a few hundred KB)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random init at std 0.02 gives near-uniform logits; a wider spread makes greedy
    # decoding decisive (no near-ties that float noise could flip between runs).
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@dataclass
class GeneratorProcess:
    config: GeneratorConfig
    process: subprocess.Popen[bytes]
    log: Path
    termination_log: Path

    @property
    def http(self) -> str:
        """host:port, as tritonclient.http takes it."""
        return f"127.0.0.1:{self.config.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.config.grpc_port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.http}{path}", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_live(self, timeout: float = 120) -> None:
        self._wait("/v2/health/live", timeout)

    def wait_ready(self, timeout: float = 600) -> None:
        self._wait("/v2/health/ready", timeout)

    def _wait(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the generator exited with {self.process.returncode}:\n{self.output()}"
                )
            with contextlib.suppress(OSError):
                if self.get(path)[0] == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"{path} not 200 within {timeout:.0f}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


@contextlib.contextmanager
def run_generator(model: str | Path, **overrides: Any) -> Iterator[GeneratorProcess]:
    """Start `contextlm generator` on free ports; stop it (SIGTERM) afterwards."""
    work = Path(tempfile.mkdtemp(prefix="contextlm-generator-"))
    fields: dict[str, Any] = {
        "model": str(model),
        "host": "127.0.0.1",
        "http_port": free_port(),
        "grpc_port": free_port(),
        "max_input_length": 256,
        "max_output_length": 64,
        "cache_dir": str(CACHE / "models"),
        "threads": 1,
        **overrides,
    }
    config = GeneratorConfig.model_validate(fields)
    path = work / "config.json"
    path.write_text(config.model_dump_json())
    log = work / "generator.log"
    termination = work / "termination-log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "contextlm.cli", "generator", "--config", str(path),
             "--termination-log", str(termination)],
            stdout=sink, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    server = GeneratorProcess(config, process, log, termination)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def termination_reason(server: GeneratorProcess) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(server.termination_log.read_text())
    return result
