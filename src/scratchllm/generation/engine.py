"""The generation engine: one prepared model, a pool of KV-cache rows, and continuous batching.

Every inference path goes through `Engine`: `generate()`/`stream_text()` in this package, the `generate`,
`chat` and `bench` commands, and the OpenAI-compatible server. Design decisions:

- The engine owns the model for inference and prepares it once: eval mode, then int8/int4 weights, or (on CPU)
  each Linear's fastest kernels for one row and a few (`generation.packed`, through `models.linear`), and the
  compiled one-token step around them if asked (`_prepare`).
- State per request lives in a `Request` and one row of a `KVCache` pool of `max_batch` rows x
  `max_seq_len` slots, allocated once. Modules hold nothing, so requests never corrupt each other.
- Continuous batching (as in Orca / vLLM, without paging): each `step()` admits waiting requests into free
  rows up to `max_batch`, spends at most `prefill_budget` prompt tokens on the rows still prefilling, and
  then runs ONE decode forward for all rows that are decoding. Rows have different lengths: each writes its
  new key/value at its own slot and a key mask hides the slots beyond it, so a row's result is the result of
  generating it alone. Decoding reads every weight once per step whatever the batch, so a batch of 8 costs
  little more than one row (the point of batching; `benchmarks/bench_serve.py` measures it).
- Chunked prefill, interleaved and batched (as vLLM / Sarathi): a long prompt is prefilled a chunk per step,
  so live rows keep decoding between its chunks instead of stalling for all of it; prompts that wait at the
  same position (arrived together) are prefilled together in one forward of (rows, chunk). With nothing
  decoding the budget does not apply. A prefilling row rides along in the decode forward (one discarded
  token at its next slot, which its next chunk overwrites): the pool stays one contiguous slice.
- A request whose prompt equals one just prefilled (`n > 1` choices, clients sending one prompt together)
  is not prefilled again: it gets a copy of that row and draws its first token from the same logits with its
  own settings (`_fork`, counted in `stats.forked_prefills`).
- Prefix reuse: one extra row keeps the last long prompt's keys and values; a prompt that starts with at least
  `PREFIX_MIN` of its tokens copies them and prefills only the rest (`stats.prefix_tokens` over
  `stats.prompt_tokens` is the hit rate the server's /health reports).
- Finished rows leave at once; the last live row moves into the gap (a copy of its filled slots) so live
  rows stay contiguous and a step is one slice of the pool, never a gather.
- Each request samples with its own settings and, with a seed, its own `torch.Generator`: a seeded request
  draws the same random numbers whatever else shares its batch (and so the same tokens, unless rounding moves
  a logit across a near-tie: a one-row step may run another matrix kernel than a batched one, `packed.py`).
  Stop ids, stop strings (held back by `StreamDecoder` until decided) and `max_new_tokens` end rows one by one.
- Beyond `max_batch` live rows requests wait in a queue bounded by `max_queue`; `submit` refuses more with
  `EngineBusy` (a server answers 429). `submit` and `cancel` are thread-safe; `step()` runs in one thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.generation.requests import EngineBusy, EngineStats, GenerationConfig, Request, TokenOut, row_logprobs
from scratchllm.generation.sampling import sample_rows
from scratchllm.generation.stream import StreamDecoder
from scratchllm.models.attention import KVCache

__all__ = ["Engine", "EngineBusy", "EngineStats", "GenerationConfig", "Request", "TokenOut"]

DEFAULT_MAX_SEQ_LEN = 8192  # cache slots per row unless told: long-context models would need GBs per row
PREFIX_MIN = 16  # the shortest shared prompt start worth copying from the prefix cache
PREFILL_BUDGET = 512  # prompt tokens prefilled per step while other rows decode


class Engine:
    """Generation for many requests on one model (see the module docstring for the design).

    quantize: None, "int8" or "int4" (weight-only); compile: compile the one-token step (torch.compile);
    prepare=False uses the model exactly as given (the library's `generate()` does, so it never rewrites a
    caller's model).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        max_batch: int = 8,
        max_seq_len: int | None = None,
        max_queue: int = 256,
        quantize: str | None = None,
        compile: bool = False,
        prepare: bool = True,
        fixed_shapes: bool | None = None,
        prefix_cache: bool = True,
        prefill_budget: int = PREFILL_BUDGET,
    ):
        if max_batch < 1:
            raise ScratchLLMError(f"max_batch must be >= 1, got {max_batch}")
        if prefill_budget < 1:
            raise ScratchLLMError(f"prefill_budget must be >= 1, got {prefill_budget}")
        self.prefill_budget = prefill_budget
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        context = model.config.context_length
        self.max_seq_len = min(context, max_seq_len or DEFAULT_MAX_SEQ_LEN)
        self.device = model.device
        # A compiled step on a GPU is replayed as a CUDA graph, which needs the same shapes every step: it
        # then decodes the whole pool of rows over every cache slot (unused rows and slots masked).
        self.fixed_shapes = (compile and self.device.type == "cuda") if fixed_shapes is None else fixed_shapes
        self._decode_fn = self._prepare(quantize, compile) if prepare else model
        # One extra row of the pool keeps the last long prompt's keys and values: a later prompt that starts the
        # same way (a shared system prompt, a few-shot header) copies them instead of computing them again. Not
        # with sliding-window layers (their ring no longer holds a prompt's start) or fixed-shape steps (which
        # write every row of the pool).
        config = model.config
        self.prefix_cache = prefix_cache and not self.fixed_shapes and all(
            config.window(i) is None for i in range(config.n_layers))  # fmt: skip
        self._prefix: list[int] = []  # the prompt whose keys and values the extra row holds
        self.cache: KVCache | None = None  # allocated on first use
        self.active: list[Request] = []
        self.stats = EngineStats()
        self._waiting: deque[Request] = deque()
        self._work = threading.Condition()
        self._grammars = None  # structured output: built on first use (generation/constrained.py)
        self._compiled: dict[str, str] = {}  # schema (as JSON text) -> its compiled grammar

    def _prepare(self, quantize: str | None, compile: bool):
        self.model.eval()
        if quantize not in (None, "int8", "int4"):
            raise ScratchLLMError(f"quantize must be None, 'int8' or 'int4', got {quantize!r}")
        if quantize == "int8":
            from scratchllm.generation.quantize import quantize_int8

            quantize_int8(self.model)
        elif quantize == "int4":
            from scratchllm.generation.quantize import quantize_int4

            quantize_int4(self.model)
        if compile:
            from scratchllm.generation.compiled import compile_decode

            return compile_decode(self.model, self.max_batch)
        if quantize is None:
            from scratchllm.generation.packed import prepare_linears

            prepare_linears(self.model, self.max_batch)  # CPU: each product's fastest kernels for its rows
        return self.model

    # -- requests ----------------------------------------------------------------------------------------
    def submit(self, prompt: list[int], cfg: GenerationConfig | None = None, listener=None) -> Request:
        """Queue a request (thread-safe); raises ScratchLLMError for a bad prompt, EngineBusy when full."""
        return self.submit_all([(prompt, cfg, listener)])[0]

    def submit_all(self, items: list[tuple[list[int], GenerationConfig | None, Callable | None]]) -> list[Request]:
        """Queue several requests at once, all or none (one reply's `n` choices or prompts): they reach the
        scheduler together, so one prompt asked n times is prefilled once (`_fork`)."""
        requests = []
        for prompt, cfg, listener in items:
            cfg = cfg or GenerationConfig()
            if cfg.stop_strings and self.tokenizer is None:
                raise ScratchLLMError("stop_strings need a tokenizer to decode the generated text")
            prompt = self.fit_prompt(prompt, cfg)
            request = Request(prompt, cfg, listener, submitted_at=time.perf_counter())
            if cfg.seed is not None:
                request._generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
            if self.tokenizer is not None:
                request._decoder = StreamDecoder(self.tokenizer, cfg.stop_strings)
            if cfg.json_schema is not None:
                request._matcher = self.json_matcher(cfg.json_schema)
            requests.append(request)
        with self._work:
            if len(self._waiting) + len(requests) > self.max_queue:
                raise EngineBusy(f"the engine's queue is full ({self.max_queue} waiting requests)")
            self._waiting.extend(requests)
            self._work.notify()
        return requests

    def json_matcher(self, schema: dict):
        """A fresh matcher for `schema` (compiled once per schema); a schema that cannot be compiled is a
        ScratchLLMError saying why, raised before anything is queued."""
        import json

        from scratchllm.generation.constrained import Grammars
        from scratchllm.generation.stream import end_of_text_ids

        if self._grammars is None:
            stops = end_of_text_ids(self.tokenizer) if self.tokenizer is not None else ()
            self._grammars = Grammars(self.tokenizer, self.model.config.vocab_size, stops)
        key = json.dumps(schema, sort_keys=True)
        if key not in self._compiled:
            self._compiled[key] = self._grammars.compile(schema)
        return self._grammars.matcher(self._compiled[key])

    def fit_prompt(self, prompt: list[int], cfg: GenerationConfig) -> list[int]:
        if len(prompt) == 0:
            raise ScratchLLMError("the prompt is empty: give at least one token")
        vocab = self.model.config.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise ScratchLLMError(f"prompt token ids must be in [0, {vocab}), got {min(prompt)}..{max(prompt)}")
        if len(prompt) < self.max_seq_len:
            return list(prompt)
        if cfg.overflow == "slide":
            return list(prompt[-(self.max_seq_len * 3 // 4) :])
        limit = (
            f"the model's context length is {self.max_seq_len}"
            if self.max_seq_len == self.model.config.context_length
            else f"this engine's max sequence length is {self.max_seq_len}"
        )
        raise ScratchLLMError(
            f"the prompt has {len(prompt)} tokens but {limit}; shorten it or use overflow='slide' to keep its end"
        )

    def cancel(self, request: Request) -> None:
        """Ask for a request to end (thread-safe): it leaves at the next step with finish_reason 'cancelled'."""
        request.cancelled = True
        with self._work:
            self._work.notify()

    @property
    def idle(self) -> bool:
        return not self.active and not self._waiting

    def run(self, requests: list[Request] | None = None) -> None:
        """Step until `requests` (default: everything queued) have finished."""
        while not (all(r.done for r in requests) if requests is not None else self.idle):
            self.step()

    def wait_for_work(self, timeout: float) -> None:
        with self._work:
            if self.idle:
                self._work.wait(timeout)

    def fail_all(self, message: str) -> None:
        """End every live and waiting request with finish_reason 'error' (after a failure in `step`)."""
        with self._work:
            waiting, self._waiting = list(self._waiting), deque()
        for request in self.active + waiting:
            request.error = message
            self._finish(request, "error")
        self.active = []

    # -- one scheduling step -----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting requests into free rows, prefill within the budget, then one decode step."""
        if self.cache is None:
            dtype = self.model.dtype
            rows = self.max_batch + self.prefix_cache
            self.cache = KVCache.allocate(self.model.config, rows, self.max_seq_len, dtype, self.device)
            if self.fixed_shapes:
                for t in self.cache.k + self.cache.v:  # written inside the graph: their addresses never change
                    torch._dynamo.mark_static_address(t)
        self._admit()
        self._retire()
        self._prefill_pending()
        self._retire()
        if any(r.decoding for r in self.active):
            self._decode()
            self._retire()

    def _admit(self) -> None:
        while len(self.active) < self.max_batch:
            with self._work:
                if not self._waiting:
                    return
                request = self._waiting.popleft()
            if request.cancelled:
                self._finish(request, "cancelled")
            elif request.cfg.max_new_tokens == 0:
                if request.cfg.prompt_logprobs is not None:  # scoring only: no cache row, one forward
                    self._score_prompt(request, self.model(torch.tensor([request.prompt], device=self.device))[0])
                self._finish(request, "length")
            else:
                twin = self._twin(request)
                self.active.append(request)
                row = len(self.active) - 1
                if twin is not None and twin._pending:  # forked once the twin's prefill is done
                    request._follows = twin
                elif twin is not None:
                    self._fork(twin, request, row)
                elif request.cfg.prompt_logprobs is not None or self.fixed_shapes:
                    self._prefill(request, row, request.prompt)  # whole now: scoring needs every chunk's logits
                else:
                    request._filled = self._reuse_prefix(request, row)
                    request._pending = len(request.prompt) - request._filled

    def _twin(self, request: Request) -> Request | None:
        """A live request with the same prompt (and prompt scoring), prefilling or just prefilled, whose row
        can be copied: `n > 1` choices, or clients sending one prompt together, are prefilled once."""
        return next((r for r in self.active if (r._first_logits is not None or r._pending) and r._follows is None
                     and r.prompt == request.prompt and r.cfg.prompt_logprobs == request.cfg.prompt_logprobs),
                    None)  # fmt: skip

    def _prefill_pending(self) -> None:
        """Spend the step's prefill budget on the rows still prefilling, batching rows that wait at the same
        position in neighbouring rows into one forward (a chunk as long as the shortest one's rest, so no row
        is padded: padding would write junk keys into a sliding window's ring)."""
        budget = self.prefill_budget if any(r.decoding for r in self.active) else None
        while budget is None or budget > 0:
            for r in self.active:  # a request whose twin ended before prefilling prefills itself
                if r._follows is not None and r._follows.done:
                    r._follows, r._pending = None, len(r.prompt) - r._filled
            rows = [i for i, r in enumerate(self.active) if r._pending]
            if not rows:
                return
            first = rows[0]
            group = [first]
            for i in rows[1:]:
                if i != group[-1] + 1 or self.active[i]._filled != self.active[first]._filled:
                    break
                group.append(i)
            if budget is not None:
                group = group[:budget]
            requests = [self.active[i] for i in group]
            chunk = min(min(r._pending for r in requests), min(r.cfg.prefill_chunk for r in requests))
            if budget is not None:
                chunk = min(chunk, budget // len(group))
                budget -= chunk * len(group)
            self._prefill_chunk(group, requests, chunk)

    def _prefill_chunk(self, group: list[int], requests: list[Request], chunk: int) -> None:
        """One forward of `chunk` prompt tokens for each row of `group` (neighbours at the same position)."""
        began = time.perf_counter()
        start = requests[0]._filled
        tokens = torch.tensor([r.prompt[start : start + chunk] for r in requests], device=self.device)
        cache = self.cache.select(group[0], group[-1] + 1)
        hidden = self.model.hidden(tokens, cache=cache, start=start)[:, -1]
        for r in requests:
            r._filled += chunk
            r._pending -= chunk
        self.stats.prefill_forwards += 1
        self.stats.largest_prefill_batch = max(self.stats.largest_prefill_batch, len(group))
        finished = [(i, r) for i, r in zip(group, requests) if not r._pending]
        logits = self.model.out_head(hidden[[group.index(i) for i, _ in finished]]) if finished else None
        seconds = time.perf_counter() - began
        self.stats.prefill_seconds += seconds
        for r in requests:
            r.prefill_seconds += seconds
        for j, (row, r) in enumerate(finished):
            self._prefilled(r, row, r.prompt)
            r._first_logits = logits[j].clone()
            self._emit([r], logits[j : j + 1])
            for follower in [f for f in self.active if f._follows is r]:
                follower._follows = None
                self._fork(r, follower, self.active.index(follower))

    def _prefilled(self, request: Request, row: int, ids: list[int]) -> None:
        """Book a finished prompt: counts, and the prefix row keeps it for the next prompt that starts alike."""
        self.stats.prompt_tokens += len(ids)
        if self.prefix_cache and len(ids) >= PREFIX_MIN and ids != self._prefix:
            self.cache.copy_row(row, self.max_batch, len(ids))
            self._prefix = list(ids)

    def _fork(self, twin: Request, request: Request, row: int) -> None:
        """Start `request` from `twin`'s prefill: its cache row copied, its first token drawn from the same
        logits with the request's own settings (and seed), so the tokens are those of a separate prefill."""
        self.cache.copy_row(self.active.index(twin), row, len(twin.prompt))
        request._filled = len(twin.prompt)
        request.prompt_logprobs = twin.prompt_logprobs
        self.stats.forked_prefills += 1
        self._emit([request], twin._first_logits[None])

    def _reuse_prefix(self, request: Request, row: int) -> int:
        """Copy the cached prefix into `row` where the prompt starts with at least PREFIX_MIN of its tokens;
        returns how many positions need no prefill (never the last: its logits give the first token)."""
        if not self.prefix_cache or request.cfg.prompt_logprobs is not None:
            return 0
        n = min(len(os.path.commonprefix([self._prefix, request.prompt])), len(request.prompt) - 1)
        if n < PREFIX_MIN:
            return 0
        self.cache.copy_row(self.max_batch, row, n)
        self.stats.prefix_hits += 1
        self.stats.prefix_tokens += n
        return n

    def _prefill(self, request: Request, row: int, ids: list[int]) -> None:
        """Prefill `ids` into `row` now, alone, in chunks: a prompt to score (every chunk's logits) or the
        re-prefill of a row that slides past its last slot."""
        began = time.perf_counter()
        cache = self.cache.select(row, row + 1)
        chunk = request.cfg.prefill_chunk
        tokens = torch.tensor([ids], device=self.device)
        scoring = request.cfg.prompt_logprobs is not None and not request.prompt_logprobs
        every = []
        for s in range(0, len(ids), chunk):
            logits = self.model(tokens[:, s : s + chunk], cache=cache, start=s, last_only=not scoring)
            if scoring:
                every.append(logits[0])
        if scoring:
            self._score_prompt(request, torch.cat(every))
        request._filled = len(ids)
        whole_prompt = ids == request.prompt  # not a slide's re-prefill of the prompt's and output's end
        request._first_logits = logits[0, -1].clone() if whole_prompt else None
        if whole_prompt:
            self._prefilled(request, row, ids)
        seconds = time.perf_counter() - began
        request.prefill_seconds += seconds
        self.stats.prefill_seconds += seconds
        self._emit([request], logits[:, -1])

    def _score_prompt(self, request: Request, logits: torch.Tensor) -> None:
        """Each prompt token's log-probability under the logits (T, vocab) of the positions before it."""
        ids = torch.tensor(request.prompt[1:], device=logits.device)
        logp = torch.log_softmax(logits[:-1].float(), dim=-1)
        chosen = logp.gather(1, ids[:, None])[:, 0].tolist()
        k = request.cfg.prompt_logprobs
        top = logp.topk(k, dim=-1) if k else None
        outs = [TokenOut(request.prompt[0], "")]
        for t, token in enumerate(request.prompt[1:]):
            alternatives = list(zip(top.indices[t].tolist(), top.values[t].tolist())) if top is not None else []
            outs.append(TokenOut(token, "", chosen[t], alternatives))
        request.prompt_logprobs = outs

    def _decode(self) -> None:
        for row, request in enumerate(self.active):  # a full row slides or stops before the step
            if request._filled >= self.max_seq_len and request.decoding:
                if request.cfg.overflow == "slide":
                    keep = self.max_seq_len * 3 // 4
                    self._prefill(request, row, (request.prompt + request.tokens)[-keep:])
                else:
                    self._finish(request, "context")
        self._retire()
        decoding = [i for i, r in enumerate(self.active) if r.decoding]
        if not decoding:
            return
        start = time.perf_counter()
        n = len(self.active)
        for i in decoding:  # a decoded row no longer holds its prompt alone: nothing to fork from
            self.active[i]._first_logits = None
        # A row still prefilling decodes a discarded token 0 at its next slot, which its next chunk rewrites.
        last = torch.tensor([[r.tokens[-1] if r.tokens else 0] for r in self.active], device=self.device)
        filled = [r._filled for r in self.active]
        cache = self.cache.select(0, n)
        if self.fixed_shapes:
            logits = self._decode_all_rows(last, filled)
        elif n == 1:
            logits = self._decode_fn(last, cache=cache, start=filled[0], last_only=True)
        else:
            slots = torch.tensor(filled, device=self.device)
            key_mask = torch.arange(max(filled) + 1, device=self.device)[None, :] <= slots[:, None]
            logits = self._decode_fn(last, cache=cache, positions=slots[:, None], key_mask=key_mask, last_only=True)
        for i in decoding:
            self.active[i]._filled += 1
        self.stats.decode_seconds += time.perf_counter() - start
        self.stats.decode_steps += 1
        self.stats.decoded_tokens += len(decoding)
        self.stats.largest_batch = max(self.stats.largest_batch, len(decoding))
        self._emit([self.active[i] for i in decoding], logits[decoding, -1] if len(decoding) < n else logits[:, -1])

    def _decode_all_rows(self, last: torch.Tensor, filled: list[int]) -> torch.Tensor:
        """One decode step of fixed shape: every row of the pool, every cache slot. Rows beyond the live ones
        read token 0 at slot 0 and are thrown away; the key mask hides each row's unfilled slots."""
        n, rows = len(filled), self.cache.rows
        tokens = torch.zeros(rows, 1, dtype=last.dtype, device=self.device)
        tokens[:n] = last
        slots = torch.zeros(rows, dtype=torch.long, device=self.device)
        slots[:n] = torch.tensor(filled, device=self.device)
        key_mask = torch.arange(self.max_seq_len, device=self.device)[None, :] <= slots[:, None]
        logits = self._decode_fn(tokens, cache=self.cache, positions=slots[:, None], key_mask=key_mask, last_only=True)
        return logits[:n]

    def _emit(self, requests: list[Request], logits: torch.Tensor) -> None:
        """Choose each row's next token, hand it to its request, and mark the rows that are done.

        Sampling and log-probabilities are computed for all rows at once on the device; the host reads the
        chosen ids once per step, whatever the batch (and the log-probabilities once, when rows ask for them)."""
        cfgs = [r.cfg for r in requests]
        constrained = [i for i, r in enumerate(requests) if r._matcher is not None]
        if constrained:  # structured output: only the tokens its grammar allows next
            logits = logits.clone()
            for i in constrained:
                logits[i].masked_fill_(~requests[i]._matcher.allowed().to(logits.device), float("-inf"))
        if all(c.greedy and c.repetition_penalty == 1.0 for c in cfgs):
            chosen_t = logits.float().argmax(dim=-1)
        else:
            uniforms = torch.rand(len(requests), device=self.device)
            for i, r in enumerate(requests):
                if r._generator is not None and not r.cfg.greedy:
                    uniforms[i] = torch.rand((), generator=r._generator, device=self.device)
            seen = [self._seen(r) if r.cfg.repetition_penalty != 1.0 else None for r in requests]
            chosen_t = sample_rows(logits, cfgs, uniforms, seen)
        logprobs = row_logprobs(logits, chosen_t, cfgs)
        chosen = chosen_t.tolist()
        now = time.perf_counter()
        for i, (r, token) in enumerate(zip(requests, chosen)):
            if r.done:
                continue
            r.first_token_at = r.first_token_at or now
            r.tokens.append(token)
            if r._history is not None:
                r._history = torch.cat([r._history, chosen_t[i : i + 1].view(1, 1)], dim=1)
            out = TokenOut(token, "")
            if i in logprobs:
                out.logprob, out.top_logprobs = logprobs[i]
            matcher = r._matcher
            if token in r.cfg.stop_ids or (matcher is not None and token in self._grammars.stop_ids):
                reason = "stop_id"
            else:
                if r._decoder is not None:
                    out.text = r._decoder.push(token)
                reason = "stop_string" if r._decoder is not None and r._decoder.stopped else None
                if matcher is not None:
                    matcher.accept(token)
                    if matcher.error:
                        r.error = f"structured output: {matcher.error}"
                        reason = "error"
                    elif reason is None and matcher.stopped:
                        reason = "grammar"  # the JSON is complete: nothing else may follow
            if reason is None and len(r.tokens) >= r.cfg.max_new_tokens:
                reason = "length"
            if r.cfg.logprobs is not None:
                r.logprobs.append(out)
            r.text += out.text
            if r.listener is not None and (out.text or r.cfg.logprobs is not None or reason != "stop_id"):
                r.listener(r, out)
            if reason is not None:
                self._finish(r, reason)

    def _seen(self, request: Request) -> torch.Tensor:
        """(1, n) ids of the prompt and output so far on the device, for the repetition penalty: copied
        over once, then grown on the device by each chosen token."""
        if request._history is None:
            request._history = torch.tensor([request.prompt + request.tokens], device=self.device)
        return request._history

    def _finish(self, request: Request, reason: str) -> None:
        if request.done:
            return
        if reason != "error" and request._decoder is not None:  # held-back text that was no stop string
            tail = request._decoder.flush()
            if tail:
                request.text += tail
                if request.listener is not None:
                    request.listener(request, TokenOut(-1, tail))
        request.finish_reason = reason
        request.finished_at = time.perf_counter()
        if request.listener is not None:
            request.listener(request, None)
        request._done.set()

    def _retire(self) -> None:
        """Drop finished (and cancelled) rows; the last live row moves into each gap."""
        for request in self.active:
            if request.cancelled:
                self._finish(request, "cancelled")
        row = 0
        while row < len(self.active):
            if self.active[row].done:
                last = self.active.pop()
                if row < len(self.active):
                    self.cache.copy_row(len(self.active), row, last._filled)
                    self.active[row] = last
            else:
                row += 1

