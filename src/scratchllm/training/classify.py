"""Classification fine-tuning (book ch. 6) as a task of the shared training loop.

`ClassifyJob` is the task's page for the one fine-tuning runner (`training/finetune.py`): it reads and
splits the labelled data, puts a `SequenceClassifier` head on the checkpoint, freezes what `trainable` says
(or the runner adds LoRA adapters), and pads every split to the training length. Batches are the book's DataLoader as a
function of the step: the training split reshuffled every epoch (a seeded permutation, so resuming needs no
state), the last incomplete batch dropped. Evaluation reports loss and accuracy on the first
`eval_batches` batches of the training and validation splits, as the book's `calc_accuracy_loader` with
`num_batches`; the final evaluation adds accuracy, per-class precision/recall/F1 and the confusion matrix of
the whole test split.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch

from scratchllm.data.classification import Encoded, balance, encode, read_labelled, split
from scratchllm.models.classifier import CLASSIFIER_FILE, SequenceClassifier, set_trainable
from scratchllm.training.config import ClassifyConfig
from scratchllm.training.finetune import FinetuneJob, run_finetune
from scratchllm.training.loop import RunResult, Task, epoch_rows


class ClassifyTask(Task):
    name = "classify"

    def __init__(self, splits: dict[str, Encoded], names: list[str], cfg: ClassifyConfig):
        self.splits, self.names, self.cfg = splits, names, cfg

    def batch(self, step: int, rows: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        train = self.splits["train"]
        picked = epoch_rows(len(train.labels), rows, step, self.cfg.seed)
        return train.ids[picked], train.labels[picked]

    def loss(self, model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(ids).float(), labels)

    @torch.no_grad()
    def predict(self, model, ids: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        device = model.device  # the split lives on the host; its logits come back there
        out = torch.cat([model(ids[i : i + 64].to(device)).float().cpu() for i in range(0, len(ids), 64)])
        model.train(was_training)
        return out

    def evaluate(self, model, step: int, final: bool, say) -> dict:
        n = self.cfg.eval_batches * self.cfg.batch_size
        record = {}
        for name in ("train", "val"):
            part = self.splits[name]
            if len(part.labels) == 0:
                continue
            logits = self.predict(model, part.ids[:n])
            record[f"{name}_loss"] = torch.nn.functional.cross_entropy(logits, part.labels[:n]).item()
            record[f"{name}_accuracy"] = (logits.argmax(-1) == part.labels[:n]).float().mean().item()
        val = ""
        if "val_loss" in record:
            val = f" | val loss {record['val_loss']:.3f}, accuracy {record['val_accuracy']:.1%}"
        say(f"step {step:5d} | train loss {record['train_loss']:.3f}, accuracy {record['train_accuracy']:.1%}{val}")
        if final and len(self.splits["test"].labels):
            report = class_report(self.predict(model, self.splits["test"].ids).argmax(-1), self.splits["test"].labels,
                                  self.names)  # fmt: skip
            say(format_report(report, "test"))
            record["test"] = report
        return record


def class_report(predicted: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict:
    """Accuracy, per-class precision / recall / F1 and the confusion matrix (rows: true, columns: predicted)."""
    k = len(names)
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class = {}
    for i, name in enumerate(names):
        tp = confusion[i, i].item()
        precision = tp / max(confusion[:, i].sum().item(), 1)
        recall = tp / max(confusion[i].sum().item(), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": confusion[i].sum().item()}
    accuracy = confusion.diag().sum().item() / max(len(labels), 1)
    return {"accuracy": accuracy, "classes": per_class, "confusion": confusion.tolist(), "labels": names}


def format_report(report: dict, split_name: str) -> str:
    names = report["labels"]
    width = max(8, *(len(n) for n in names))
    lines = [f"{split_name} accuracy {report['accuracy']:.2%} ({sum(sum(r) for r in report['confusion'])} texts)",
             f"{'class':{width}s} precision recall     f1 support"]  # fmt: skip
    for name, m in report["classes"].items():
        lines.append(f"{name:{width}s} {m['precision']:9.2%} {m['recall']:6.2%} {m['f1']:6.2%} {m['support']:7d}")
    lines.append("confusion (rows: true, columns: predicted): " + json.dumps(report["confusion"]))
    return "\n".join(lines)


def load_splits(cfg: ClassifyConfig) -> tuple:
    """Read, balance and split the labelled data as the config says; returns (train, val, test)."""
    from scratchllm.data.registry import fetch, named

    found = named(cfg.data, "labelled")
    if found is not None:
        text, label, fmt = found.columns
        data = read_labelled(fetch(found), text, label, fmt)
    else:
        data = read_labelled(cfg.data, cfg.text_column, cfg.label_column)
    if cfg.balance:
        data = balance(data, cfg.split_seed)
    return split(data, cfg.train_fraction, cfg.val_fraction, cfg.split_seed)


class ClassifyJob(FinetuneJob):
    """Chapter 6: the checkpoint under a new classification head, trained on labelled texts."""

    unit = "texts"
    data_kind = "labelled"
    causal_lm = False

    def read(self) -> None:
        self.train, self.val, self.test = load_splits(self.cfg)

    def model(self, backbone, tokenizer):
        self.pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
        return SequenceClassifier(backbone, len(self.train.names), self.cfg.pooling, self.pad_id)

    def freeze(self, model) -> None:
        set_trainable(model, self.cfg.trainable)

    def task(self, model, tokenizer, dist):
        cfg, limit = self.cfg, model.backbone.config.context_length
        self.splits = {"train": encode(self.train, tokenizer, self.pad_id, cfg.max_length, limit)}
        self.length = self.splits["train"].ids.shape[1]
        self.splits["val"], self.splits["test"] = (encode(s, tokenizer, self.pad_id, self.length)
                                                   for s in (self.val, self.test))  # fmt: skip
        return ClassifyTask(self.splits, self.train.names, cfg), len(self.train)

    def files(self) -> dict[str, str]:
        info = {"labels": self.train.names, "pooling": self.cfg.pooling, "pad_id": self.pad_id,
                "max_length": self.length}  # fmt: skip
        return {CLASSIFIER_FILE: json.dumps(info, indent=2)}

    def describe(self) -> str:
        truncated = sum(s.truncated for s in self.splits.values())
        return (f"data {len(self.train):,} / {len(self.val):,} / {len(self.test):,} texts (train / validation / "
                f"test), labels {self.train.counts()}, padded to {self.length} tokens"
                + (f", {truncated} truncated" if truncated else "") + f", pooling {self.cfg.pooling}")  # fmt: skip


def finetune_classifier(cfg: ClassifyConfig, resume: bool = False, overwrite: bool = False,
                        on_step: Callable[[int], None] | None = None) -> RunResult:  # fmt: skip
    """Fine-tune a classifier as `cfg` says (or resume it); returns the run folder and metrics."""
    return run_finetune(ClassifyJob(cfg), resume, overwrite, on_step)
