"""What the engine works on: a request's settings (`GenerationConfig`), the request and its output so far
(`Request`), each generated token as a listener sees it (`TokenOut`), the engine's counters (`EngineStats`),
and the log-probabilities reported per row."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.generation.sampling import SamplingConfig
from scratchllm.generation.stream import StreamDecoder


@dataclass
class GenerationConfig(SamplingConfig):
    max_new_tokens: int = 128
    stop_ids: tuple[int, ...] = ()  # end-of-text ids: a row stops after emitting one
    stop_strings: tuple[str, ...] = ()  # a row stops once its text contains one (needs a tokenizer)
    overflow: str = "stop"  # when the cache row is full: "stop" or "slide" (re-prefill the last 3/4)
    prefill_chunk: int = 1024
    logprobs: int | None = None  # also report the chosen token's log-probability and this many alternatives
    # also score the prompt: each prompt token's log-probability given the tokens before it (the first has
    # none) and this many alternatives; with max_new_tokens 0 that is all the request does (lm-eval's echo)
    prompt_logprobs: int | None = None
    # structured output: the reply is JSON valid under this schema, enforced token by token (`constrained.py`)
    json_schema: dict | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_new_tokens < 0:
            raise ScratchLLMError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.overflow not in ("stop", "slide"):
            raise ScratchLLMError(f"overflow must be 'stop' or 'slide', got {self.overflow!r}")
        if self.prefill_chunk < 1:
            raise ScratchLLMError(f"prefill_chunk must be >= 1, got {self.prefill_chunk}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 20:
                raise ScratchLLMError(f"{name} must be between 0 and 20, got {value}")


@dataclass
class TokenOut:
    """One generated token as a listener sees it: `text` is what it released (held-back text comes later)."""

    token: int
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


class EngineBusy(ScratchLLMError):
    """The waiting queue is full; try again later."""


@dataclass(eq=False)
class Request:
    """One generation: its prompt, settings, output so far and, once done, why it ended.

    finish_reason: "length" (max_new_tokens), "stop_id", "stop_string", "grammar" (its JSON is complete),
    "context" (its cache row is full),
    "cancelled" or "error" (then `error` says why). `listener(request, out)` is called from the engine's
    thread with each `TokenOut`, and once with None when the request has finished.
    """

    prompt: list[int]
    cfg: GenerationConfig
    listener: Callable[[Request, TokenOut | None], None] | None = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenOut] = field(default_factory=list)
    prompt_logprobs: list[TokenOut] = field(default_factory=list)  # with cfg.prompt_logprobs: one per prompt token
    finish_reason: str | None = None
    error: str | None = None
    cancelled: bool = False
    submitted_at: float = 0.0
    first_token_at: float | None = None
    finished_at: float | None = None
    prefill_seconds: float = 0.0
    _filled: int = 0  # cache slots holding this request's keys/values
    _pending: int = 0  # prompt positions still to prefill (the row decodes once it is 0)
    _follows: Request | None = None  # a live request with the same prompt, whose prefill this one will copy
    _first_logits: torch.Tensor | None = None  # the prefill's last logits, until the next decode step (forks)
    _generator: torch.Generator | None = None
    _decoder: StreamDecoder | None = None
    _history: torch.Tensor | None = None  # prompt + tokens on the device (repetition penalty only)
    _matcher: object | None = None  # with cfg.json_schema: where the reply stands in the schema's grammar
    _done: threading.Event = field(default_factory=threading.Event)

    @property
    def decoding(self) -> bool:
        """Its prompt is in its cache row (not still prefilling, nor waiting to copy a twin's)."""
        return not self._pending and self._follows is None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


@dataclass
class EngineStats:
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    decoded_tokens: int = 0  # rows x steps
    largest_batch: int = 0  # most rows decoded together in one step
    forked_prefills: int = 0  # prompts not prefilled because a row with the same prompt was copied
    prompt_tokens: int = 0  # prompt positions of requests admitted with a prefill
    prefix_hits: int = 0  # of those requests, how many started from the cached prefix
    prefix_tokens: int = 0  # positions copied from the cached prefix instead of computed
    prefill_forwards: int = 0  # forwards spent on prompts
    largest_prefill_batch: int = 0  # most prompts prefilled together in one forward


def row_logprobs(logits: torch.Tensor, chosen: torch.Tensor, cfgs: list[GenerationConfig]) -> dict:
    """Row -> (log-probability of its chosen token, its `logprobs` most likely alternatives or None), for the
    rows that ask, from one log-softmax over those rows."""
    want = [i for i, c in enumerate(cfgs) if c.logprobs is not None]
    if not want:
        return {}
    logp = torch.log_softmax(logits[want].float(), dim=-1)
    picked = logp.gather(1, chosen[want].unsqueeze(1)).squeeze(1).tolist()
    k = max(cfgs[i].logprobs for i in want)
    top_ids, top_vals = [[]] * len(want), [[]] * len(want)
    if k:
        top = torch.topk(logp, k)
        top_ids, top_vals = top.indices.tolist(), top.values.tolist()
    out = {}
    for j, i in enumerate(want):
        n = cfgs[i].logprobs
        out[i] = (picked[j], list(zip(top_ids[j][:n], top_vals[j][:n])) if n else None)
    return out
