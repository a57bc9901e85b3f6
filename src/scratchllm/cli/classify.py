"""`scratchllm classify --checkpoint RUN TEXT...`: label texts with a fine-tuned classifier.

Texts come from the arguments, or from --file: a text file (one text per line) or a CSV/TSV/JSONL file with
a text column (--text-column). Prints the label and its probability per text, or one JSON object per line
with --json (every class's probability).
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("classify", help="label texts with a classifier from `finetune classify`",
                       description=__doc__)  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="a `finetune classify` run folder")
    p.add_argument("texts", nargs="*", help="texts to label")
    p.add_argument("--file", default=None, help="a .txt file (one text per line) or a CSV/TSV/JSONL file")
    p.add_argument("--text-column", default="text", help="column name (or 0-based number) for CSV/TSV/JSONL")
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.set_defaults(handler=run)


def _texts(args) -> list[str]:
    from pathlib import Path

    from scratchllm.errors import ScratchLLMError

    texts = list(args.texts)
    empty = next((i for i, t in enumerate(texts) if not t.strip()), None)
    if empty is not None:
        raise ScratchLLMError(f"text argument {empty + 1} is empty: there is nothing to classify")
    if args.file:
        path = Path(args.file)
        if path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json"):
            from scratchllm.data.classification import read_texts

            texts += read_texts(path, args.text_column)
        else:
            try:
                texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as e:
                raise ScratchLLMError(f"{path}: cannot read as UTF-8 text ({e})") from None
    if not texts:
        raise ScratchLLMError("no text to classify: give texts as arguments or --file")
    return texts


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from scratchllm.checkpoints.load import load_classifier
    from scratchllm.data.classification import pad_rows
    from scratchllm.errors import ScratchLLMError
    from scratchllm.hardware import check_device, default_device

    texts = _texts(args)
    model, tokenizer, info = load_classifier(args.checkpoint, check_device(args.device or default_device()))
    rows = [tokenizer.encode(text) for text in texts]
    if empty := [i + 1 for i, r in enumerate(rows) if not r]:
        raise ScratchLLMError(f"text {empty[0]} is empty: there is nothing to classify")
    # Padded to the training length exactly as in training (see data.classification.pad_rows).
    ids = pad_rows(rows, info["pad_id"], info["max_length"])
    with torch.no_grad():
        probs = torch.cat([model(ids[i : i + 64].to(model.device)).float().softmax(-1).cpu()
                           for i in range(0, len(ids), 64)])  # fmt: skip
    for text, p in zip(texts, probs):
        best = int(p.argmax())
        if args.json:
            print(json.dumps({"text": text, "label": info["labels"][best],
                              "probabilities": dict(zip(info["labels"], p.tolist()))}))  # fmt: skip
        else:
            print(f"{info['labels'][best]}\t{p[best]:.3f}\t{text}")
    return 0
