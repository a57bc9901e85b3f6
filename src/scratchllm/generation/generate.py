"""Autoregressive generation as functions: the book's simple loop, and `generate`/`stream_text` on the engine.

`generate_text_simple` is the book's loop (ch. 4.7: no cache, the whole sequence every step), kept as the
reference the fast path is tested against. `generate` and `stream_text` run a short-lived `Engine` on the
caller's model without rewriting its weights (prepare=False), so library users get the KV cache, prefill /
decode split and batching of the engine with nothing to set up. How the fast path works (prefill, decode,
rows of different lengths decoding together) is explained in `generation.engine`.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.generation.engine import Engine, GenerationConfig
from scratchllm.generation.stream import StreamDecoder

__all__ = ["Engine", "GenerationConfig", "GenerationResult", "StreamDecoder", "generate", "stream_text"]


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # new tokens per prompt (stop id included, nothing after it)
    stop_reasons: list[str]  # "length", "stop_id", "stop_string" or "context"
    texts: list[str] | None = None  # decoded new text, cut before a stop string (when a tokenizer was given)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prompt_tokens: int = 0
    decode_steps: int = 0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Decoding steps per second: tokens per second per sequence (batch rows count once)."""
        return self.decode_steps / self.decode_seconds if self.decode_seconds else 0.0


@torch.no_grad()
def generate_text_simple(model, idx: torch.Tensor, max_new_tokens: int, context_size: int) -> torch.Tensor:
    """The book's greedy loop (ch. 4.7): crop to the context, run the whole sequence, take the argmax."""
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])[:, -1, :]
        idx = torch.cat([idx, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return idx


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _engine_for(model, n_rows: int, longest: int, cfg: GenerationConfig, tokenizer, engine: Engine | None) -> Engine:
    if engine is not None:
        return engine
    context = model.config.context_length
    needed = context if cfg.overflow == "slide" else min(context, longest + cfg.max_new_tokens)
    return Engine(model, tokenizer, max_batch=n_rows, max_seq_len=max(needed, 1), prepare=False)


def generate(
    model, prompts: list[list[int]], cfg: GenerationConfig | None = None, tokenizer=None, engine: Engine | None = None
) -> GenerationResult:
    """Generate for a batch of token-id prompts; with a tokenizer, decode texts and honour stop strings.

    Pass a long-lived `engine` (built on `model`) to reuse its prepared weights and cache pool.
    """
    cfg = cfg or GenerationConfig()
    if not prompts:
        raise ScratchLLMError("no prompt given")
    engine = _engine_for(model, len(prompts), max(len(p) for p in prompts), cfg, tokenizer, engine)
    before = dict(vars(engine.stats))
    requests = []
    for i, p in enumerate(prompts):
        try:
            requests.append(engine.submit(p, cfg))
        except ScratchLLMError as e:
            raise ScratchLLMError(f"prompt {i}: {e}") from None
    with _eval_mode(model):
        engine.run(requests)
    stats = {k: v - before[k] for k, v in vars(engine.stats).items()}
    return GenerationResult(
        tokens=[r.tokens for r in requests], stop_reasons=[r.finish_reason for r in requests],
        texts=[r.text for r in requests] if engine.tokenizer is not None else None,
        prefill_seconds=stats["prefill_seconds"], decode_seconds=stats["decode_seconds"],
        prompt_tokens=sum(len(r.prompt) for r in requests), decode_steps=stats["decode_steps"],
    )  # fmt: skip


def stream_text(
    model,
    tokenizer,
    prompt_ids: list[int],
    cfg: GenerationConfig | None = None,
    timings: dict | None = None,
    engine: Engine | None = None,
) -> Iterator[str]:
    """Yield decoded text pieces as tokens arrive (one prompt); stops at stop ids and stop strings.

    `timings`, when given, receives prefill/decode seconds, the number of new tokens ("new_tokens") and
    "context_full" when the context ended the answer. Closing the iterator early cancels the request.
    """
    cfg = cfg or GenerationConfig()
    timings = timings if timings is not None else {}
    engine = _engine_for(model, 1, len(prompt_ids), cfg, tokenizer, engine)
    if engine.tokenizer is None:
        raise ScratchLLMError("stream_text needs an engine with a tokenizer")
    pieces: queue.SimpleQueue = queue.SimpleQueue()

    def listen(request, out) -> None:
        if out is not None and out.text:
            pieces.put(out.text)

    request = engine.submit(prompt_ids, cfg, listener=listen)
    decode_before = engine.stats.decode_seconds
    try:
        with _eval_mode(model):
            while not request.done:
                engine.step()
                while not pieces.empty():
                    yield pieces.get()
        while not pieces.empty():
            yield pieces.get()
    finally:
        if not request.done:
            engine.cancel(request)
            engine.run([request])
        timings["prefill_seconds"] = request.prefill_seconds
        timings["decode_seconds"] = engine.stats.decode_seconds - decode_before
        timings["new_tokens"] = len([t for t in request.tokens if t not in cfg.stop_ids])
        timings["context_full"] = request.finish_reason == "context"
