"""Classification fine-tuning (book ch. 6) as a task of the shared training loop.

`finetune_classifier` loads any `--checkpoint` (run folder, HF or Meta folder, hub name, or a preset for
random weights), replaces its output by a `SequenceClassifier` head, freezes what `trainable` says, reads
and splits the labelled data, and hands everything to `fit`. Batches are the book's DataLoader as a
function of the step: the training split reshuffled every epoch (a seeded permutation, so resuming needs no
state), the last incomplete batch dropped. Evaluation reports loss and accuracy on the first
`eval_batches` batches of the training and validation splits, as the book's `calc_accuracy_loader` with
`num_batches`; the final evaluation adds accuracy, per-class precision/recall/F1 and the confusion matrix of
the whole test split.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from scratchllm.data.classification import NAMED, Encoded, balance, encode, read_labelled, split
from scratchllm.errors import ScratchLLMError
from scratchllm.files import atomic_write
from scratchllm.models.classifier import SequenceClassifier, set_trainable
from scratchllm.training.config import ClassifyConfig
from scratchllm.training.distributed import init_distributed, shutdown
from scratchllm.training.loop import RunResult, Task, claim_run_dir, epoch_rows, fit, open_run_dir

CLASSIFIER_FILE = "classifier.json"


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
    from scratchllm.data.classification import named_dataset

    if cfg.data in NAMED and not Path(cfg.data).exists():
        layout = NAMED[cfg.data]
        data = read_labelled(named_dataset(cfg.data), layout["text"], layout["label"], layout["format"])
    else:
        data = read_labelled(cfg.data, cfg.text_column, cfg.label_column)
    if cfg.balance:
        data = balance(data, cfg.split_seed)
    return split(data, cfg.train_fraction, cfg.val_fraction, cfg.split_seed)


def finetune_classifier(cfg: ClassifyConfig, resume: bool = False, overwrite: bool = False,
                        on_step: Callable[[int], None] | None = None) -> RunResult:  # fmt: skip
    """Fine-tune a classifier as `cfg` says (or resume it); returns the run folder and metrics."""
    from scratchllm.checkpoints.load import load_for_finetuning

    dist = init_distributed(cfg.device)
    try:
        run_dir = Path(cfg.out_dir)
        replacing = claim_run_dir(run_dir, resume, overwrite, {"--checkpoint": cfg.checkpoint, "--data": cfg.data,
                                   "--tokenizer": cfg.tokenizer}, cfg) if dist.is_main else False  # fmt: skip
        train, val, test = load_splits(cfg)
        backbone, tokenizer = load_for_finetuning(cfg.checkpoint, cfg.tokenizer, cfg.seed, dist.device)
        pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
        limit = backbone.config.context_length
        splits = {"train": encode(train, tokenizer, pad_id, cfg.max_length, limit)}
        length = splits["train"].ids.shape[1]
        splits["val"], splits["test"] = (encode(s, tokenizer, pad_id, length) for s in (val, test))
        torch.manual_seed(cfg.seed)
        model = SequenceClassifier(backbone, len(train.names), cfg.pooling, pad_id).to(dist.device)
        if cfg.trainable == "lora":  # appendix E: adapters on every Linear incl. the new head, all else frozen
            from scratchllm.models.lora import apply_lora

            apply_lora(model, cfg.lora_config())
        else:
            set_trainable(model, cfg.trainable)
        rows = cfg.batch_size * cfg.grad_accum * dist.world_size
        if len(train) < rows:
            raise ScratchLLMError(f"{cfg.data}: {len(train)} training texts, fewer than a batch of {rows}")
        if cfg.epochs is not None:
            cfg.max_steps = cfg.epochs * (len(train) // rows)
        if dist.is_main:
            open_run_dir(run_dir, replacing, cfg, tokenizer)
            info = {"labels": train.names, "pooling": cfg.pooling, "pad_id": pad_id, "max_length": length}
            atomic_write(run_dir / CLASSIFIER_FILE, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
            truncated = sum(s.truncated for s in splits.values())
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"data {len(train):,} / {len(val):,} / {len(test):,} texts (train / validation / test), "
                  f"labels {train.counts()}, padded to {length} tokens"
                  + (f", {truncated} truncated" if truncated else "")
                  + f"; {trainable:,} trainable parameters ({cfg.trainable}), pooling {cfg.pooling}, "
                  f"{cfg.max_steps} steps")  # fmt: skip
        return fit(model, ClassifyTask(splits, train.names, cfg), cfg, run_dir, dist, resume, on_step)
    finally:
        shutdown(dist)


def load_classifier(folder: str | Path, device: str = "cpu"):
    """(SequenceClassifier, tokenizer, info) from a `finetune classify` run folder."""
    from scratchllm.checkpoints.io import WEIGHTS_FILE, check_state_dict, load_tensors, read_model_config, tied_aliases
    from scratchllm.files import read_json
    from scratchllm.models import Transformer
    from scratchllm.tokenizers.formats import load_tokenizer

    folder = Path(folder)
    if not (folder / CLASSIFIER_FILE).exists():
        raise ScratchLLMError(f"{folder}: not a classifier run folder (no {CLASSIFIER_FILE}); see finetune classify")
    info = read_json(folder / CLASSIFIER_FILE)
    model = SequenceClassifier(Transformer(read_model_config(folder)), len(info["labels"]), info["pooling"],
                               info["pad_id"])  # fmt: skip
    tensors = load_tensors(folder / WEIGHTS_FILE)
    check_state_dict(model, tensors, str(folder / WEIGHTS_FILE))
    for alias, name in tied_aliases(model).items():
        tensors.setdefault(alias, tensors[name])
    model.load_state_dict(tensors)
    return model.to(device).eval(), load_tokenizer(folder), info
