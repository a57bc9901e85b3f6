"""OpenAI's request and response shapes: validating a request into engine settings, and building replies.

Kept apart from the HTTP layer (`serving.app`) so the rules can be read in one place:
- Honoured exactly: temperature (0 = greedy), top_p, max_tokens / max_completion_tokens, stop (a string
  or up to 4 strings; the stop text is not returned), seed, n, logprobs / top_logprobs (<= 20), and the
  common extensions vLLM also accepts (top_k, min_p, repetition_penalty).
- Completions also take a list of prompts (strings or token-id lists; each gives n choices, in order) and
  `echo` (the prompt returned before the completion, with each prompt token's logprob and top logprobs,
  the first token's null as OpenAI's; `max_tokens: 0` scores the prompt alone): what lm-evaluation-harness
  sends for loglikelihood tasks. `echo` with `stream` is refused.
- A parameter we cannot honour is refused with a 400 naming it, never silently ignored (litgpt turns
  temperature 0 into 0.8 and drops max_tokens and stop; users cannot tell): so is any field not listed in
  `FIELDS_OF`, a typo included. `user`, `metadata` and `store` are accepted as bookkeeping.
- Defaults as OpenAI's: max_tokens 16 for completions, the rest of the context for chat.
- usage: prompt_tokens is the prompt's length; completion_tokens counts every sampled token, an
  end-of-text token included (as vLLM counts it).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from scratchllm.generation.engine import GenerationConfig, Request, TokenOut

MAX_N = 8
MAX_STOP_STRINGS = 4
FINISH_REASONS = {"stop_id": "stop", "stop_string": "stop", "grammar": "stop", "length": "length", "context": "length"}
# Accepted only at their neutral value: anything else would change the output in a way we do not implement.
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "best_of": 1, "suffix": None, "tools": None,
           "functions": None, "logit_bias": None, "tool_choice": "none", "modalities": ["text"]}  # fmt: skip
# Every field a request may carry; any other (reasoning_effort, prediction, audio, a typo such as max_token)
# is a 400 naming it. `user`, `metadata` and `store` are bookkeeping that cannot change the output.
FIELDS = {"model", "stream", "stream_options", "temperature", "top_p", "n", "seed", "stop", "max_tokens", "logprobs",
          "top_k", "min_p", "repetition_penalty", "response_format", "user", "metadata", "store", *NEUTRAL}  # fmt: skip
FIELDS_OF = {"completions": FIELDS | {"prompt", "echo"},
             "chat": FIELDS | {"messages", "max_completion_tokens", "top_logprobs", "chat_template_kwargs",
                               "parallel_tool_calls"}}  # fmt: skip


class ApiError(Exception):
    """An error reply in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}  # fmt: skip

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _number(body: dict, name: str, default, low: float, high: float, integer: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        expected = "an integer" if integer else "a number"
        raise ApiError(400, f"'{name}' must be {expected}, got {value!r}", name)
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low} and {high}, got {value}", name)
    return value


@dataclass
class Parsed:
    """A validated request: the prompt ids, settings per choice, and how to reply."""

    prompts: list[list[int]]  # one per choice: n choices per prompt, prompts in order
    configs: list[GenerationConfig]  # one per choice; seeds differ per choice
    stream: bool
    include_usage: bool
    logprobs: int | None
    echo: bool = False
    prompt_tokens: int = 0  # usage: every prompt's length once


def thinking(body: dict) -> bool:
    """`chat_template_kwargs: {"enable_thinking": false}` (vLLM's and SGLang's field): a reasoning model (the
    qwen3 style) answers without thinking first. Other template arguments are refused, not ignored."""
    kwargs = body.get("chat_template_kwargs")
    if kwargs is None:
        return True
    if not isinstance(kwargs, dict):
        raise ApiError(400, "'chat_template_kwargs' must be an object", "chat_template_kwargs")
    unknown = sorted(set(kwargs) - {"enable_thinking"})
    if unknown:
        raise ApiError(400, f"chat_template_kwargs {unknown[0]!r} is not supported (only enable_thinking)",
                       "chat_template_kwargs")  # fmt: skip
    value = kwargs.get("enable_thinking", True)
    if not isinstance(value, bool):
        raise ApiError(400, "'enable_thinking' must be true or false", "chat_template_kwargs")
    return value


def parse_settings(body: dict, prompt: list[int], *, chat: bool, max_seq_len: int, max_tokens_limit: int,
                   stop_ids: tuple[int, ...], extra_stops: tuple[str, ...] = ()) -> Parsed:  # fmt: skip
    """Validate the sampling fields of a completions or chat request (see the module docstring)."""
    unknown = sorted(set(body) - FIELDS_OF["chat" if chat else "completions"])
    if unknown:
        raise ApiError(400, f"'{unknown[0]}' is not supported by this server", unknown[0])
    for name, neutral in {**NEUTRAL, **({"echo": False} if chat else {})}.items():
        value = body.get(name)
        if value is not None and value != neutral and value not in ({}, []):
            raise ApiError(400, f"'{name}' is not supported by this server (only {neutral!r})", name)
    echo = body.get("echo") or False
    if not isinstance(echo, bool):
        raise ApiError(400, "'echo' must be true or false", "echo")
    schema = response_schema(body.get("response_format"))
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise ApiError(400, "'top_p' must be greater than 0", "top_p")
    n = _number(body, "n", 1, 1, MAX_N, integer=True)
    seed = _number(body, "seed", None, -(2**63), 2**63 - 1, integer=True)
    room = max_seq_len - len(prompt)
    if room < 1:
        message = f"the prompt has {len(prompt)} tokens; this server's maximum context length is {max_seq_len} tokens"
        raise ApiError(400, message, "messages" if chat else "prompt", "context_length_exceeded")
    name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, name, None, 0 if echo else 1, max_tokens_limit, integer=True)
    if max_tokens is None:
        max_tokens = min(room, max_tokens_limit) if chat else min(16, room)
    elif len(prompt) + max_tokens > max_seq_len:
        message = (f"this server's maximum context length is {max_seq_len} tokens; the prompt has {len(prompt)} "
                   f"and {name} asks for {max_tokens}")  # fmt: skip
        raise ApiError(400, message, name, "context_length_exceeded")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "'stop' must be a non-empty string or a list of non-empty strings", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "stop")
    if chat:
        wants = body.get("logprobs", False)
        if not isinstance(wants, bool):
            raise ApiError(400, "'logprobs' must be true or false", "logprobs")
        top = _number(body, "top_logprobs", 0 if wants else None, 0, 20, integer=True)
        if top is not None and not wants and "top_logprobs" in body and body["top_logprobs"] is not None:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
        logprobs = top if wants else None
    else:
        logprobs = _number(body, "logprobs", None, 0, 20, integer=True)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", "stream")
    if echo and stream:
        raise ApiError(400, "'echo' is not supported with 'stream' by this server", "echo")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    extras = dict(top_k=_number(body, "top_k", None, 1, 1 << 30, integer=True),
                  min_p=_number(body, "min_p", None, 0.0, 1.0),
                  repetition_penalty=_number(body, "repetition_penalty", 1.0, 1e-3, 100.0))  # fmt: skip
    if extras["top_k"] == -1:
        extras["top_k"] = None
    configs = [
        GenerationConfig(
            max_new_tokens=max_tokens, temperature=temperature, top_p=top_p if top_p < 1 else None, seed=
            None if seed is None else seed + i, stop_ids=stop_ids, stop_strings=tuple(stops) + extra_stops,
            logprobs=logprobs, prompt_logprobs=logprobs if echo else None, json_schema=schema, **extras,
        )  # fmt: skip
        for i in range(n)
    ]
    return Parsed([prompt] * n, configs, stream, bool(options.get("include_usage")), logprobs, echo, len(prompt))


def response_schema(fmt: Any) -> dict | None:
    """The JSON schema a `response_format` asks for (None for plain text): `json_object` is any JSON object,
    `json_schema` its `schema`; the engine then enforces it token by token."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ApiError(400, "'response_format.json_schema' must be an object with a 'schema' object",
                           "response_format")  # fmt: skip
        unknown = sorted(set(spec) - {"name", "description", "schema", "strict"})
        if unknown:
            raise ApiError(400, f"'response_format.json_schema.{unknown[0]}' is not supported", "response_format")
        return spec.get("schema", {})
    raise ApiError(400, "'response_format' must have type text, json_object or json_schema", "response_format")


MAX_PROMPTS = 64


def prompt_list(prompt: Any) -> list[str | list[int]]:
    """`prompt` as a list of prompts: a string, a token-id list, or a list of either (at most MAX_PROMPTS)."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt)):
        prompt = [prompt]
    ok = lambda p: (isinstance(p, str) and p) or (isinstance(p, list) and p and all(type(t) is int for t in p))  # noqa: E731
    if not isinstance(prompt, list) or not prompt or not all(ok(p) for p in prompt):
        raise ApiError(400, "'prompt' must be a non-empty string, a list of token ids, or a list of either", "prompt")
    if len(prompt) > MAX_PROMPTS:
        raise ApiError(400, f"'prompt' takes at most {MAX_PROMPTS} prompts, got {len(prompt)}", "prompt")
    return prompt


def merge(parts: list[Parsed]) -> Parsed:
    """The choices of several prompts' requests as one reply (a completions request with a list of prompts)."""
    first = parts[0]
    return Parsed([p for part in parts for p in part.prompts], [c for part in parts for c in part.configs],
                  first.stream, first.include_usage, first.logprobs, first.echo, sum(p.prompt_tokens for p in parts))


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def finish_reason(request: Request) -> str:
    return FINISH_REASONS.get(request.finish_reason or "", "stop")


def usage(prompt_tokens: int, requests: list[Request]) -> dict:
    """Token counts; `prompt_tokens` counts each prompt once, however many choices it has."""
    completion = sum(len(r.tokens) for r in requests)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def _token_text(tokenizer, token: int) -> tuple[str, list[int]]:
    raw = tokenizer.token_bytes(token)
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(tokenizer, outs: list[TokenOut]) -> dict:
    """OpenAI's chat shape: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}."""
    content = []
    for out in outs:
        text, raw = _token_text(tokenizer, out.token)
        top = [dict(zip(("token", "bytes"), _token_text(tokenizer, t)), logprob=lp) for t, lp in out.top_logprobs or []]
        content.append({"token": text, "logprob": out.logprob, "bytes": raw, "top_logprobs": top})
    return {"content": content}


def completion_logprobs(tokenizer, outs: list[TokenOut], offset: int = 0) -> dict:
    """The legacy completions shape: parallel lists of tokens, their logprobs, top alternatives and offsets."""
    tokens, logps, tops, offsets = [], [], [], []
    for out in outs:
        text = _token_text(tokenizer, out.token)[0]
        tokens.append(text)
        logps.append(out.logprob)  # None for an echoed prompt's first token, as OpenAI's
        top = {_token_text(tokenizer, t)[0]: lp for t, lp in out.top_logprobs or []}
        if out.logprob is not None:  # OpenAI's rule: the chosen token is always shown, so up to logprobs + 1
            top.setdefault(text, out.logprob)
        tops.append(None if out.logprob is None else top)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": logps, "top_logprobs": tops, "text_offset": offsets}


def envelope(kind: str, reply_id: str, model: str, choices: list[dict], created: int | None = None) -> dict:
    return {"id": reply_id, "object": kind, "created": created or int(time.time()), "model": model, "choices": choices}


def message_text(message: Any, index: int) -> tuple[str, str]:
    """(role, text) of one chat message, validating its shape; content may be a string or text parts."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ApiError(400, f"{where} must be an object with 'role' and 'content'", where)
    role, content = message.get("role"), message.get("content")
    if role == "developer":
        role = "system"
    if role not in ("system", "user", "assistant"):
        raise ApiError(400, f"{where}.role must be system, user or assistant, got {role!r}", f"{where}.role")
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"{where}.content: only text parts are supported", f"{where}.content")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise ApiError(400, f"{where}.content must be a string", f"{where}.content")
    return role, content
