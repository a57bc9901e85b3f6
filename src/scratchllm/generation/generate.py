"""Autoregressive generation: the book's simple loop, and the fast KV-cache path (prefill + decode).

Design of the fast path (after gpt-fast):
- Prefill: the whole prompt goes through the model in one forward pass (in chunks of `prefill_chunk`
  tokens for long prompts), filling a KV cache preallocated to the final length, and only the last
  position's logits are computed.
- Decode: one token per step; each step reads the cache in place and writes one slot, so a step costs
  one pass over the weights whatever the length so far.
- Batches of prompts of different lengths are left-padded. Each row gets its own position ids (counting
  from its first real token) and a key mask that hides its padding, so every row's greedy result equals
  generating it alone. Padding slots hold a copy of the row's first token: they are never attended, and
  a real token id keeps the repetition penalty's bookkeeping simple.
- At the context length either stop (reason "context") or slide: keep the last 3/4 of the context, prefill
  it again with fresh positions, and continue (the book crops to the context every step; re-prefilling
  in steps keeps that behaviour at a fraction of the cost).
The book's `generate_text_simple` (no cache, whole sequence every step) is kept as the reference.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.generation.compiled import cache_length
from scratchllm.generation.sampling import SamplingConfig, sample_next


@dataclass
class GenerationConfig(SamplingConfig):
    max_new_tokens: int = 128
    stop_ids: tuple[int, ...] = ()  # end-of-text ids: a row stops after emitting one
    stop_strings: tuple[str, ...] = ()  # a row stops once its text contains one (needs a tokenizer)
    overflow: str = "stop"  # at the context length: "stop" or "slide"
    prefill_chunk: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_new_tokens < 0:
            raise ScratchLLMError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.overflow not in ("stop", "slide"):
            raise ScratchLLMError(f"overflow must be 'stop' or 'slide', got {self.overflow!r}")


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
        """Decoded tokens per second per sequence (batch rows count once)."""
        return self.decode_steps / self.decode_seconds if self.decode_seconds else 0.0


@torch.no_grad()
def generate_text_simple(model, idx: torch.Tensor, max_new_tokens: int, context_size: int) -> torch.Tensor:
    """The book's greedy loop (ch. 4.7): crop to the context, run the whole sequence, take the argmax."""
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])[:, -1, :]
        idx = torch.cat([idx, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return idx


class _Batch:
    """Left-padded token rows plus what the model needs to treat each row as if it were alone."""

    def __init__(self, rows: list[list[int]], device):
        lengths = [len(r) for r in rows]
        self.width = max(lengths)
        self.pad = torch.tensor([self.width - n for n in lengths], device=device)
        self.padded = bool(self.pad.any())
        self.ids = torch.tensor([[r[0]] * (self.width - len(r)) + r for r in rows], device=device)

    def positions(self, start: int, n: int) -> torch.Tensor | None:
        if not self.padded:
            return None
        return (torch.arange(start, start + n, device=self.pad.device)[None, :] - self.pad[:, None]).clamp(min=0)

    def key_mask(self, n_slots: int) -> torch.Tensor | None:
        if not self.padded:
            return None
        return torch.arange(n_slots, device=self.pad.device)[None, :] >= self.pad[:, None]


def _prefill(model, batch: _Batch, cache_len: int, chunk: int) -> torch.Tensor:
    model.setup_cache(len(batch.ids), cache_len)
    key_mask = batch.key_mask(cache_len)
    for s in range(0, batch.width, chunk):
        part = batch.ids[:, s : s + chunk]
        logits = model(part, start=s, positions=batch.positions(s, part.shape[1]), key_mask=key_mask, last_only=True)
    return logits[:, -1]


def _check_prompts(prompts: list[list[int]], context: int, cfg: GenerationConfig) -> list[list[int]]:
    if not prompts:
        raise ScratchLLMError("no prompt given")
    out = []
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ScratchLLMError(f"prompt {i} is empty: give at least one token")
        if len(p) >= context:
            if cfg.overflow != "slide":
                raise ScratchLLMError(
                    f"prompt {i} has {len(p)} tokens but the model's context length is {context}; "
                    "shorten it or use overflow='slide' to keep its last tokens"
                )
            p = p[-(context * 3 // 4) :]
        out.append(list(p))
    return out


@torch.no_grad()  # also when the caller forgot: generation never needs a graph (and compiled decode can't take one)
def generate_steps(model, prompts: list[list[int]], cfg: GenerationConfig, timings: dict | None = None) -> Iterator:
    """Yield (step, next_tokens (batch,), finished mask) after each new token; the engine of `generate`.

    A row is finished once it has emitted a stop id (the id itself is yielded). Stop strings are text, so
    the callers (`generate`, `stream_text`) check them; they simply stop consuming.
    """
    context = model.config.context_length
    prompts = _check_prompts(prompts, context, cfg)
    device = model.tok_emb.weight.device
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None else None
    timings = timings if timings is not None else {}
    rows = [list(p) for p in prompts]
    batch = _Batch(rows, device)
    cache_len = cache_length(model, batch.width + cfg.max_new_tokens)
    stop_ids = torch.tensor(list(cfg.stop_ids) or [-1], device=device)
    finished = torch.zeros(len(rows), dtype=torch.bool, device=device)
    model.eval()
    decode = getattr(model, "compiled_decode", None) or model  # see generation.compiled
    start = time.perf_counter()
    logits = _prefill(model, batch, cache_len, cfg.prefill_chunk)
    seq = batch.ids
    slot = batch.width
    try:
        for step in range(cfg.max_new_tokens):
            nxt = sample_next(logits, cfg, generator, seen=seq if cfg.repetition_penalty != 1.0 else None)
            if step == 0:
                timings["prefill_seconds"] = time.perf_counter() - start
                start = time.perf_counter()
            seq = torch.cat([seq, nxt], dim=1)
            finished = finished | torch.isin(nxt[:, 0], stop_ids)
            yield step, nxt[:, 0], finished
            if bool(finished.all()) or step == cfg.max_new_tokens - 1:
                break
            if slot >= cache_len:
                if cfg.overflow == "stop":
                    timings["context_full"] = True
                    break
                # Slide: keep the last 3/4 of the context of every row and prefill it again.
                keep = context * 3 // 4
                rows = [r[int(p) :][-keep:] for r, p in zip(seq.tolist(), batch.pad)]
                batch = _Batch(rows, device)
                logits = _prefill(model, batch, context, cfg.prefill_chunk)
                seq, slot = batch.ids, batch.width
                continue
            key_mask = batch.key_mask(cache_len)
            logits = decode(nxt, start=slot, positions=batch.positions(slot, 1), key_mask=key_mask)[:, -1]
            slot += 1
    finally:
        timings["decode_seconds"] = time.perf_counter() - start
        model.clear_cache()


def generate(model, prompts: list[list[int]], cfg: GenerationConfig | None = None, tokenizer=None) -> GenerationResult:
    """Generate for a batch of token-id prompts; with a tokenizer, decode texts and honour stop strings."""
    cfg = cfg or GenerationConfig()
    if cfg.stop_strings and tokenizer is None:
        raise ScratchLLMError("stop_strings need a tokenizer to decode the generated text")
    n = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(n)]
    reasons = ["length"] * n
    done = [False] * n
    timings: dict = {}
    steps = 0
    for _, nxt, finished in generate_steps(model, prompts, cfg, timings):
        steps += 1
        for i, t in enumerate(nxt.tolist()):
            if done[i]:
                continue
            tokens[i].append(t)
            if bool(finished[i]):
                done[i], reasons[i] = True, "stop_id"
            elif cfg.stop_strings and any(s in tokenizer.decode(tokens[i][-64:]) for s in cfg.stop_strings):
                done[i], reasons[i] = True, "stop_string"
        if all(done):
            break
    if timings.get("context_full"):
        reasons = [r if d else "context" for r, d in zip(reasons, done)]
    texts = None
    if tokenizer is not None:
        texts = [_cut_at_stop(tokenizer.decode(t), cfg.stop_strings) for t in tokens]
    return GenerationResult(
        tokens=tokens, stop_reasons=reasons, texts=texts, prefill_seconds=timings.get("prefill_seconds", 0.0),
        decode_seconds=timings.get("decode_seconds", 0.0), prompt_tokens=sum(len(p) for p in prompts),
        decode_steps=max(steps - 1, 0),
    )  # fmt: skip


def _cut_at_stop(text: str, stop_strings: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in stop_strings if s in text), default=-1)
    return text if cut < 0 else text[:cut]


class StreamDecoder:
    """Incremental token -> text decoding that never emits half of a multi-byte UTF-8 character.

    Text that could be the beginning of a stop string is held back until it is known not to be one;
    `stopped` turns True once a stop string has appeared (the text before it has then been emitted).
    """

    def __init__(self, tokenizer, stop_strings: tuple[str, ...] = ()):
        import codecs

        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self._bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._hold = max((len(s) - 1 for s in stop_strings), default=0)
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self._pending += self._bytes.decode(self.tokenizer.token_bytes(token))
        if self.stop_strings and any(s in self._pending for s in self.stop_strings):
            self.stopped = True
            out, self._pending = _cut_at_stop(self._pending, self.stop_strings), ""
            return out
        cut = len(self._pending) - self._hold
        if cut <= 0:
            return ""
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        if self.stopped:
            return ""
        out, self._pending = self._pending + self._bytes.decode(b"", final=True), ""
        return out


def stream_text(
    model, tokenizer, prompt_ids: list[int], cfg: GenerationConfig | None = None, timings: dict | None = None
) -> Iterator[str]:
    """Yield decoded text pieces as tokens arrive (one prompt); stops at stop ids and stop strings.

    `timings`, when given, receives prefill/decode seconds and the number of new tokens ("new_tokens").
    """
    cfg = cfg or GenerationConfig()
    timings = timings if timings is not None else {}
    timings["new_tokens"] = 0
    decoder = StreamDecoder(tokenizer, cfg.stop_strings)
    stop_ids = set(cfg.stop_ids)
    with contextlib.closing(generate_steps(model, [prompt_ids], cfg, timings)) as steps:
        for _, nxt, _ in steps:
            token = int(nxt[0])
            if token in stop_ids:
                break
            timings["new_tokens"] += 1
            piece = decoder.push(token)
            if piece:
                yield piece
            if decoder.stopped:
                return
    tail = decoder.flush()
    if tail:
        yield tail
