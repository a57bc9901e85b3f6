"""Structured output: a JSON schema enforced token by token (constrained decoding), with llguidance.

Before each token is chosen, the grammar of the schema says which tokens may come next; every other token's
logit becomes -inf, so whatever the model's weights (random ones included) the reply parses as JSON and
validates against the schema, and it ends only where the JSON is complete (the end-of-text token is allowed
only there). The constraint does all the work; the model only chooses among what the grammar allows.

Decisions:
- llguidance over xgrammar (the two engines vLLM and SGLang offer): `benchmarks/bench_grammar.py` times
  both on the same schemas and vocabulary (figures in docs/benchmarks.md), and llguidance is one
  self-contained wheel, where xgrammar pulls in transformers, triton and a TVM runtime.
- One token table per tokenizer, built from our own tokenizer (`token_bytes` of every id, special tokens
  marked as llguidance expects, with a leading 0xFF byte, so no special token can appear inside the JSON
  text), cached on the engine; a compiled matcher per request.
- Errors: a schema llguidance cannot compile is refused before the request runs (the server answers 400);
  a matcher that enters an error state ends its request with finish reason "error".
"""

from __future__ import annotations

import json
from functools import cached_property

import torch

from scratchllm.errors import ScratchLLMError

_BITS = torch.arange(32, dtype=torch.int32)


def token_table(tokenizer, vocab_size: int) -> list[bytes]:
    """Each id's bytes; special tokens (and any without text: control, unknown) as 0xFF + a name, llguidance's
    mark for tokens that are never text; ids past the tokenizer's vocabulary (a padded embedding) empty."""
    specials = {i: name for name, i in getattr(tokenizer, "special_tokens", {}).items()}
    table = []
    for i in range(vocab_size):
        raw = b"" if i >= tokenizer.vocab_size else None if i in specials else tokenizer.token_bytes(i)
        if raw is None or (raw == b"" and i < tokenizer.vocab_size):
            raw = b"\xff" + specials.get(i, f"<id-{i}>").encode()
        table.append(raw)
    return table


class _Wrapped:
    """The tokenizer as llguidance's TokenizerWrapper reads it."""

    def __init__(self, tokenizer, tokens: list[bytes], stop_ids: tuple[int, ...]):
        self.tokenizer, self.tokens = tokenizer, tokens
        self.eos_token_id = stop_ids[0] if stop_ids else tokenizer.eot_id
        self.bos_token_id = None
        self.special_token_ids = [i for i, t in enumerate(tokens) if t.startswith(b"\xff")]

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self.tokenizer.encode_ordinary(text)


class Grammars:
    """Compiles JSON schemas into per-request matchers for one tokenizer and vocabulary size."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: tuple[int, ...]):
        if tokenizer is None:
            raise ScratchLLMError("structured output needs the model's tokenizer")
        self.tokenizer, self.vocab_size, self.stop_ids = tokenizer, vocab_size, tuple(stop_ids)

    @cached_property
    def _lltokenizer(self):
        import llguidance

        eos = list(self.stop_ids) or None
        tok = self.tokenizer
        if hasattr(tok, "ranks"):  # byte-level BPE: llguidance reads the rank table natively (0.4 s for GPT-2's)
            return llguidance.LLTokenizer.from_tiktoken(encoder=tok.ranks, special_tokens=tok.special_tokens,
                                                        pattern=tok.pattern, eos_token=eos, n_vocab=self.vocab_size)
        # Others (SentencePiece) through a wrapper that our encoder serves: slower to build (it tokenizes each
        # token once; about a minute for 50k tokens here), once per engine.
        wrapped = _Wrapped(tok, token_table(tok, self.vocab_size), self.stop_ids)
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(wrapped), n_vocab=self.vocab_size, eos_token=eos)

    def compile(self, schema: dict) -> str:
        """The grammar of `schema`, checked; a schema it cannot take is a ScratchLLMError saying why."""
        import llguidance

        try:  # compact JSON: free whitespace would let a weak model pad a reply with it forever
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                                    defaults={"whitespace_flexible": False})
        except ValueError as e:
            raise ScratchLLMError(f"json schema: {e}") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self._lltokenizer)
        if is_error:
            raise ScratchLLMError(f"json schema: {messages[0]}")
        return grammar

    def matcher(self, grammar: str) -> JsonMatcher:
        return JsonMatcher(self._lltokenizer, grammar, self.vocab_size)


class JsonMatcher:
    """One request's position in its grammar: which tokens may come next, and the tokens chosen so far."""

    def __init__(self, lltokenizer, grammar: str, vocab_size: int):
        import llguidance

        self._m = llguidance.LLMatcher(lltokenizer, grammar, log_level=0)
        self._bitmask = torch.zeros((vocab_size + 31) // 32, dtype=torch.int32)
        self.vocab_size = vocab_size

    def allowed(self) -> torch.Tensor:
        """(vocab,) bool: the tokens the grammar allows next."""
        self._m.unsafe_compute_mask_ptr(self._bitmask.data_ptr(), self._bitmask.numel() * 4)
        return ((self._bitmask[:, None] >> _BITS) & 1).bool().view(-1)[: self.vocab_size]

    def accept(self, token: int) -> None:
        self._m.consume_token(token)

    @property
    def error(self) -> str | None:
        return self._m.get_error() or None if self._m.is_error() else None

    @property
    def stopped(self) -> bool:
        """Complete: nothing but the end of the reply may follow."""
        return self._m.is_stopped()
