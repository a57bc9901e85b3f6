"""Labelled texts for classification fine-tuning (book ch. 6): reading, balancing, splitting, token ids.

Decisions:
- Any CSV, TSV or JSONL file of (text, label) records. Columns are named (a header row, or JSONL keys) or
  given as 0-based positions for headerless files such as the SMS Spam Collection (`label=0, text=1`).
- Label strings map to ids in sorted order (ham -> 0, spam -> 1, as the book numbers them); the mapping is
  saved with the model.
- Balancing and splitting reproduce the book's pandas calls with numpy alone: `df.sample(n, random_state=s)`
  is `RandomState(s).permutation(len)[:n]`. So the book's SMS split comes out exactly: 5,572 messages
  (4,825 ham, 747 spam), ham undersampled to 747 with seed 123 -> 1,494, shuffled with seed 123 and cut
  70/10/20 -> 1,045 / 149 / 300.
- Every split is padded to the longest training text (120 GPT-2 tokens for the book's split) so that
  `last` pooling sees what the book's model sees; longer validation/test texts are truncated to it and
  counted. Texts longer than the context are truncated too, with a count, never silently.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scratchllm.errors import ScratchLLMError


@dataclass
class Labelled:
    texts: list[str]
    labels: list[int]  # ids into `names`
    names: list[str]  # label strings, sorted

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, order: np.ndarray) -> Labelled:
        return Labelled([self.texts[i] for i in order], [self.labels[i] for i in order], self.names)

    def counts(self) -> dict[str, int]:
        return {name: self.labels.count(i) for i, name in enumerate(self.names)}


def _column(row: list[str], key: str, header: list[str] | None, path: Path, lineno: int) -> str:
    if key.isdigit() and header is None:
        index = int(key)
    elif header is not None and key in header:
        index = header.index(key)
    else:
        where = f"columns {header}" if header else "no header row: give the column as a 0-based number"
        raise ScratchLLMError(f"{path}: no column {key!r} ({where})")
    if index >= len(row):
        raise ScratchLLMError(f"{path}:{lineno}: expected a field {key!r} (column {index}), the row has {len(row)}")
    return row[index]


def _check_text(text: str, key: str, path: Path, lineno: int) -> None:
    """An empty (or blank) text is refused where it is read, by file and line: after balancing and shuffling a
    record number would no longer point into the file."""
    if not text.strip():
        raise ScratchLLMError(f"{path}:{lineno}: field {key!r} is empty")


def _read_fields(path: Path, keys: list[str], fmt: str | None = None) -> list[list[str]]:
    """The values of `keys` in every record of a CSV/TSV (header row, or numeric columns) or JSONL file."""
    fmt = fmt or {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower())
    if fmt is None:
        raise ScratchLLMError(f"{path}: unknown format; expected .csv, .tsv or .jsonl")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ScratchLLMError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise ScratchLLMError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    out: list[list[str]] = []
    if fmt == "jsonl":
        # Records end at "\n" only: str.splitlines() would also cut at U+2028 and other separators, which
        # valid JSON strings may hold unescaped.
        for lineno, line in enumerate(raw.split("\n"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ScratchLLMError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            for key in keys:
                if not isinstance(record, dict) or key not in record:
                    raise ScratchLLMError(f"{path}:{lineno}: record has no field {key!r}")
            if not isinstance(record[keys[0]], str):
                raise ScratchLLMError(f"{path}:{lineno}: field {keys[0]!r} should be a string")
            _check_text(record[keys[0]], keys[0], path, lineno)
            for key in keys[1:]:
                value = record[key]
                if isinstance(value, float) and not math.isfinite(value):
                    raise ScratchLLMError(f"{path}:{lineno}: field {key!r} is {value}, not a usable label")
                if not isinstance(value, str | int | float):  # booleans are ints: true/false are two classes
                    raise ScratchLLMError(f"{path}:{lineno}: field {key!r} should be a string or a number, "
                                          f"got {json.dumps(value)[:40]}")  # fmt: skip
            out.append([str(record[k]) for k in keys])
        return out
    # A quoted CSV field may hold newlines and be long: read the file as one stream, with no field size limit
    # beyond the file's own, and name records by the line they start on.
    csv.field_size_limit(max(csv.field_size_limit(), len(raw) + 1))
    reader = csv.reader(io.StringIO(raw, newline=""), delimiter="\t" if fmt == "tsv" else ",")
    numeric = all(k.isdigit() for k in keys)
    header, start = None, 1
    try:
        for row in reader:
            if header is None and not numeric:
                header = row
            elif row:
                out.append([_column(row, k, header, path, start) for k in keys])
                _check_text(out[-1][0], keys[0], path, start)
            start = reader.line_num + 1
    except csv.Error as e:
        raise ScratchLLMError(f"{path}:{start}: malformed {fmt.upper()} ({e})") from None
    return out


def read_texts(path: str | Path, text: str = "text") -> list[str]:
    """The texts of a CSV/TSV/JSONL file (for `scratchllm classify --file`)."""
    return [t for (t,) in _read_fields(Path(path), [text])]


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def canonical_label(raw: str) -> str:
    """One spelling per class: surrounding spaces dropped, numbers written one way ("1", "1.0", " 1 " and
    JSON's 1 are the class "1"; "0.50" is "0.5"), any other text kept as it is."""
    label = raw.strip()
    if _NUMBER.fullmatch(label):
        value = float(label)
        if math.isfinite(value):
            return str(int(value)) if value.is_integer() else repr(value)
    return label


def read_labelled(path: str | Path, text: str = "text", label: str = "label", fmt: str | None = None) -> Labelled:
    """(text, label) records from a CSV/TSV (header row, or numeric columns for headerless files) or JSONL."""
    path = Path(path)
    pairs = _read_fields(path, [text, label], fmt)
    if not pairs:
        raise ScratchLLMError(f"{path}: no records")
    pairs = [(t, canonical_label(lab)) for t, lab in pairs]
    names = sorted({lab for _, lab in pairs})
    if len(names) < 2:
        raise ScratchLLMError(f"{path}: field {label!r} has a single class {names[0]!r}; need at least two")
    ids = {name: i for i, name in enumerate(names)}
    return Labelled([t for t, _ in pairs], [ids[lab] for _, lab in pairs], names)


def balance(data: Labelled, seed: int = 123) -> Labelled:
    """Undersample every class to the smallest one's size (the book's `df.sample(n, random_state=seed)`)."""
    by_class = [[i for i, lab in enumerate(data.labels) if lab == c] for c in range(len(data.names))]
    n = min(len(rows) for rows in by_class)
    # Classes in the order they first appear (ham, then spam for the SMS file), as the book concatenates them.
    order = sorted(range(len(by_class)), key=lambda c: by_class[c][0] if by_class[c] else len(data))
    picked: list[int] = []
    for c in order:
        rows = by_class[c]
        picked += rows if len(rows) == n else [rows[i] for i in np.random.RandomState(seed).permutation(len(rows))[:n]]
    return data.subset(np.array(picked))


def split(data: Labelled, train: float = 0.7, val: float = 0.1, seed: int = 123) -> tuple[Labelled, ...]:
    """Shuffle with `seed` (the book's `df.sample(frac=1)`), then cut train / validation / test in order."""
    if not (0 < train < 1 and 0 <= val < 1 and train + val < 1):
        raise ScratchLLMError(f"split fractions train {train}, validation {val}: need 0 < train, train + val < 1")
    shuffled = data.subset(np.random.RandomState(seed).permutation(len(data)))
    train_end = int(len(data) * train)
    val_end = train_end + int(len(data) * val)
    cut = [(0, train_end), (train_end, val_end), (val_end, len(data))]
    return tuple(shuffled.subset(np.arange(a, b)) for a, b in cut)


@dataclass
class Encoded:
    """A split as padded token ids (rows, length) and label ids (rows,)."""

    ids: torch.Tensor
    labels: torch.Tensor
    truncated: int  # texts cut to `length`


def encode(data: Labelled, tokenizer, pad_id: int, length: int | None = None, limit: int | None = None) -> Encoded:
    """Token ids padded on the right with `pad_id` to `length` (default: the longest text, at most `limit`)."""
    rows = [tokenizer.encode(t) for t in data.texts]
    if any(len(r) == 0 for r in rows):
        text = next(t for t, r in zip(data.texts, rows) if len(r) == 0)
        raise ScratchLLMError(f"the text {text[:40]!r} encodes to no tokens")
    length = length or max(len(r) for r in rows)
    if limit is not None:
        length = min(length, limit)
    truncated = sum(len(r) > length for r in rows)
    return Encoded(pad_rows(rows, pad_id, length), torch.tensor(data.labels, dtype=torch.long), truncated)


def pad_rows(rows: list[list[int]], pad_id: int, length: int) -> torch.Tensor:
    """(len(rows), length) ids: each row cut to `length`, then padded on the right with `pad_id`.

    Training and `scratchllm classify` both pad this way, so a classifier reads the same position (with the
    book's `last` pooling, the final, padding position) at inference as it did in training."""
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        r = r[:length]
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids
