"""Instruction data (book ch. 7): records, the book's split, prompt + response token ids, and the collate.

Records are JSON (a list) or JSONL, either the book's {"instruction", "input", "output"} or chat-style
{"messages": [{"role", "content"}, ...]} whose last message is the assistant's answer. A missing or
non-string field is one error naming the file, the record number and the field.

The split is the book's, in file order: the first 85% train, the next 10% test, the rest validation
(1,100 records -> 935 / 110 / 55). Each record becomes (prompt ids, full ids): the prompt is the record
formatted by a prompt style up to where the response starts, the full sequence adds the response.

`collate` is the book's `custom_collate_fn`: append one end-of-text token, pad to the batch's longest with
the pad id, targets shifted by one, the first padding position kept as the end-of-text target and every
later one set to -100, optional truncation to a maximum length. With `mask_prompt` the targets that
predict prompt tokens are -100 too (the book leaves this off; its exercise 7.2 tries it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.files import read_text
from scratchllm.prompts import PromptStyle

IGNORE_INDEX = -100


@dataclass
class Example:
    record: dict  # the record as read (written back with the model's response)
    prompt: str  # the formatted prompt, ending where the response starts
    response: str  # the expected response


def _field(record: dict, name: str, where: str, optional: bool = False) -> str:
    if name not in record:
        if optional:
            return ""
        raise ScratchLLMError(f"{where}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, str):
        raise ScratchLLMError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSON list or a JSONL file (one object per line)."""
    path = Path(path)
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ScratchLLMError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from None
    else:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ScratchLLMError(f"{path}: line {n} is not JSON ({e.msg})") from None
    if not records:
        raise ScratchLLMError(f"{path}: no records")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ScratchLLMError(f"{path}: record {i} is not an object")
    return records


def to_example(record: dict, style: PromptStyle, where: str) -> Example:
    """One record as (prompt, response) in `style`; chat records render all but the last message."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or len(messages) < 2:
            raise ScratchLLMError(f"{where}: field 'messages' must be a list of at least two messages")
        for j, m in enumerate(messages):
            if not isinstance(m, dict):
                raise ScratchLLMError(f"{where}: messages[{j}] must be an object")
            _field(m, "role", f"{where} messages[{j}]")
            _field(m, "content", f"{where} messages[{j}]")
        if messages[-1]["role"] != "assistant":
            raise ScratchLLMError(f"{where}: the last message must be the assistant's answer")
        return Example(record, style.render(messages[:-1]), messages[-1]["content"])
    instruction = _field(record, "instruction", where)
    return Example(record, style.format_instruction(instruction, _field(record, "input", where, optional=True)),
                   _field(record, "output", where))  # fmt: skip


def read_examples(path: str | Path, style: PromptStyle) -> list[Example]:
    return [to_example(r, style, f"{path}: record {i}") for i, r in enumerate(read_records(path))]


def write_responses(path: Path, examples: list[Example], answers: list[str]) -> None:
    """The book's response file (ch. 7.7): each record plus its `model_response`, written atomically."""
    from scratchllm.files import atomic_write

    records = [{**ex.record, "model_response": a} for ex, a in zip(examples, answers)]
    text = json.dumps(records, indent=1, ensure_ascii=False)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def book_split(items: list, train: float = 0.85, test: float = 0.10) -> tuple[list, list, list]:
    """(train, validation, test) in file order, as the book splits (int() of each share; validation the rest)."""
    n_train, n_test = int(len(items) * train), int(len(items) * test)
    return items[:n_train], items[n_train + n_test :], items[n_train : n_train + n_test]


@dataclass
class Encoded:
    ids: list[int]  # prompt + response token ids
    prompt_len: int


def encode(examples: list[Example], tokenizer) -> list[Encoded]:
    out = []
    for ex in examples:
        prompt = tokenizer.encode(ex.prompt, allowed_special="all")
        out.append(Encoded(prompt + tokenizer.encode(ex.response, allowed_special="all"), len(prompt)))
    return out


def collate(batch: list[list[int]], pad_id: int = 50256, max_length: int | None = None,
            prompt_lens: list[int] | None = None):  # fmt: skip
    """(inputs, targets) tensors for token-id sequences, as the book's `custom_collate_fn` (module docstring)."""
    import torch

    width = max(len(item) + 1 for item in batch)
    inputs, targets = [], []
    for i, item in enumerate(batch):
        padded = item + [pad_id] * (width - len(item))  # the end-of-text token, then padding
        x, y = torch.tensor(padded[:-1]), torch.tensor(padded[1:])
        y[len(item) :] = IGNORE_INDEX  # padding after the first (end-of-text) one is ignored
        if prompt_lens is not None:
            y[: max(prompt_lens[i] - 1, 0)] = IGNORE_INDEX  # targets that predict prompt tokens
        if max_length is not None:
            x, y = x[:max_length], y[:max_length]
        inputs.append(x)
        targets.append(y)
    return torch.stack(inputs), torch.stack(targets)
