"""Direct preference optimisation (book ch. 7 bonus) as a task of the shared training loop.

    loss = -log sigmoid(beta * ((log p(chosen) - log p_ref(chosen)) - (log p(rejected) - log p_ref(rejected))))

Decisions:
- The reference model is the frozen starting model. Full fine-tuning keeps a frozen copy (it stays
  bit-identical: tested); with `--lora` the reference is the same model with its adapters switched off,
  so no second copy of the weights is held.
- Log-probabilities cover the response tokens only: prompt tokens and padding are masked out. `--logp mean`
  (the book's default) averages them over the response; `--logp sum` sums them, as TRL and torchtune do.
- Logged rewards follow the convention picked: with `mean` they are the book's unscaled log-ratio
  differences (`reward_chosen` = log p(chosen) - log p_ref(chosen)); with `sum` they are scaled by beta
  (TRL's). The margin is chosen minus rejected; reward accuracy the share of pairs with a positive margin.
  At the start policy == reference, so the loss is ln 2 = 0.6931 and the margin 0.
- Data: the book's preference records (instruction/input/output plus `chosen` and `rejected`), split
  85 / 10 / 5 in file order, formatted with the prompt style the SFT run saved (or `--style`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from scratchllm.data.instructions import book_split, read_records, to_example
from scratchllm.errors import ScratchLLMError
from scratchllm.prompts import STYLE_FILE, get_style
from scratchllm.training.config import DPOConfig
from scratchllm.training.finetune import FinetuneJob, run_finetune
from scratchllm.training.loop import RunResult, Task, epoch_rows


def sequence_logp(model, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, reduce: str) -> torch.Tensor:
    """(batch,) log-probability of each row's masked target tokens: their mean or their sum."""
    logp = torch.log_softmax(model(inputs).float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    total = (logp * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if reduce == "mean" else total


def dpo_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float,
             scale_rewards: bool) -> dict[str, torch.Tensor]:  # fmt: skip
    """DPO loss and reward statistics from policy (p) and reference (r) log-probs of chosen (c) / rejected (r)."""
    chosen, rejected = pc - rc, pr - rr
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    scale = beta if scale_rewards else 1.0
    margin = (chosen - rejected) * scale
    return {"loss": loss, "reward_chosen": (chosen * scale).mean(), "reward_rejected": (rejected * scale).mean(),
            "reward_margin": margin.mean(), "reward_accuracy": (margin > 0).float().mean()}  # fmt: skip


# The alpaca prompt ends with this marker; the book's collate counts all of it but its two newlines as response.
BOOK_MARKER = "\n\n### Response:\n"


def encode_pairs(records: list[dict], style, tokenizer, where: str,
                 book_mask: bool = False) -> list[tuple[list[int], list[int], int]]:  # fmt: skip
    """(prompt + chosen ids, prompt + rejected ids, first response index) per record; errors name the file,
    record and field. The response starts after the prompt, or with `book_mask` where the book's collate
    starts it: the instruction's tokens + 2, and then each sequence is tokenised whole as the book does."""
    out = []
    for i, r in enumerate(records):
        ex = to_example({**r, "output": r.get("output", "")}, style, f"{where}: record {i}")
        for name in ("chosen", "rejected"):
            if not isinstance(r.get(name), str):
                raise ScratchLLMError(f"{where}: record {i}: field {name!r} missing or not a string")
        if book_mask:
            instruction = ex.prompt.removesuffix(BOOK_MARKER)
            start = len(tokenizer.encode(instruction, allowed_special="all")) + 2
            chosen, rejected = (tokenizer.encode(ex.prompt + r[k], allowed_special="all")
                                for k in ("chosen", "rejected"))  # fmt: skip
        else:
            prompt = tokenizer.encode(ex.prompt, allowed_special="all")
            start = len(prompt)
            chosen, rejected = prompt + tokenizer.encode(r["chosen"]), prompt + tokenizer.encode(r["rejected"])
        out.append((chosen, rejected, start))
    return out


def collate_pairs(pairs, pad_id: int, max_length: int) -> tuple[torch.Tensor, ...]:
    """For chosen and rejected: inputs, targets (shifted by one) and a mask that is 1 on response targets only."""
    out = []
    for side in (0, 1):
        rows = [pair[side][: max_length + 1] for pair in pairs]
        width = max(len(r) for r in rows) - 1
        inputs = torch.full((len(rows), width), pad_id)
        targets = torch.full((len(rows), width), pad_id)
        mask = torch.zeros(len(rows), width)
        for i, (row, pair) in enumerate(zip(rows, pairs)):
            n = len(row) - 1
            inputs[i, :n], targets[i, :n] = torch.tensor(row[:-1]), torch.tensor(row[1:])
            mask[i, pair[2] - 1 : n] = 1.0  # targets that are response tokens
        out += [inputs, targets, mask]
    return tuple(out)


class DPOTask(Task):
    name = "dpo"

    def __init__(self, splits: dict, reference, cfg: DPOConfig, pad_id: int, max_length: int):
        self.splits, self.reference, self.cfg = splits, reference, cfg
        self.pad_id, self.max_length = pad_id, max_length

    def batch(self, step: int, rows: int, rng: torch.Generator) -> tuple[torch.Tensor, ...]:
        train = self.splits["train"]
        return collate_pairs([train[i] for i in epoch_rows(len(train), rows, step, self.cfg.seed).tolist()],
                             self.pad_id, self.max_length)  # fmt: skip

    def stats(self, model, ci, ct, cm, ri, rt, rm) -> dict[str, torch.Tensor]:
        reduce = self.cfg.logp
        pc, pr = sequence_logp(model, ci, ct, cm, reduce), sequence_logp(model, ri, rt, rm, reduce)
        with torch.no_grad():
            if self.reference is None:  # LoRA: the reference is the model without its adapters
                from scratchllm.models.lora import set_lora_enabled

                set_lora_enabled(model, False)
                try:
                    rc, rr = sequence_logp(model, ci, ct, cm, reduce), sequence_logp(model, ri, rt, rm, reduce)
                finally:
                    set_lora_enabled(model, True)
            else:
                rc, rr = (sequence_logp(self.reference, ci, ct, cm, reduce),
                          sequence_logp(self.reference, ri, rt, rm, reduce))  # fmt: skip
        return dpo_loss(pc, pr, rc, rr, self.cfg.beta, scale_rewards=reduce == "sum")

    def loss(self, model, *batch: torch.Tensor) -> torch.Tensor:
        return self.stats(model, *batch)["loss"]

    def tokens(self, batch) -> int:
        return int(batch[2].sum() + batch[5].sum())

    @torch.no_grad()
    def evaluate(self, model, step: int, final: bool, say) -> dict:
        was_training = model.training
        model.eval()
        device = model.device
        record = {}
        for name in ("train", "val"):
            pairs = self.splits[name][: self.cfg.eval_batches * self.cfg.batch_size]
            if not pairs:
                continue
            sums: dict[str, float] = {}
            for i in range(0, len(pairs), self.cfg.batch_size):
                part = pairs[i : i + self.cfg.batch_size]
                batch = [t.to(device) for t in collate_pairs(part, self.pad_id, self.max_length)]
                for key, value in self.stats(model, *batch).items():
                    sums[key] = sums.get(key, 0.0) + value.item() * len(part)
            for key, value in sums.items():
                record[f"{name}_{key}"] = value / len(pairs)
        model.train(was_training)
        val = (f" | val loss {record['val_loss']:.4f}, margin {record['val_reward_margin']:.3f}"
               if "val_loss" in record else "")  # fmt: skip
        say(f"step {step:5d} | train loss {record['train_loss']:.4f}, margin {record['train_reward_margin']:.3f}, "
            f"accuracy {record['train_reward_accuracy']:.0%}{val}")  # fmt: skip
        return record


class DPOJob(FinetuneJob):
    """Preference tuning: the checkpoint against a frozen reference on chosen / rejected pairs."""

    unit = "pairs"
    data_kind = "preferences"

    def read(self) -> None:
        from scratchllm.checkpoints.load import saved_style
        from scratchllm.data.registry import dataset_file

        cfg = self.cfg
        saved = saved_style(Path(cfg.checkpoint)) if Path(cfg.checkpoint).is_dir() else None
        self.style = get_style(cfg.style or saved or "alpaca")
        if cfg.response_mask == "book" and self.style.name != "alpaca":
            raise ScratchLLMError(f"--response-mask book: the book's mask is defined on its alpaca prompt; the style "
                                  f"here is {self.style.name} (use --response-mask response)")  # fmt: skip
        self.where = dataset_file(cfg.data, self.data_kind)
        self.records = read_records(self.where)

    def task(self, model, tokenizer, dist):
        cfg = self.cfg
        book = cfg.response_mask == "book"
        pairs = encode_pairs(self.records, self.style, tokenizer, str(self.where), book_mask=book)
        self.train, self.val, self.test = book_split(pairs)
        # LoRA: the reference is the model with its adapters off, so no second copy of the weights is held.
        self.reference = None if cfg.lora else copy.deepcopy(model).eval().requires_grad_(False)
        max_length = min(cfg.max_length or model.config.context_length, model.config.context_length)
        pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
        splits = {"train": self.train, "val": self.val, "test": self.test}
        return DPOTask(splits, self.reference, cfg, pad_id, max_length), len(self.train)

    def files(self) -> dict[str, str]:
        return {STYLE_FILE: json.dumps({"style": self.style.name})}

    def describe(self) -> str:
        cfg = self.cfg
        reference = "the model without adapters" if cfg.lora else "a frozen copy"
        return (f"data {len(self.train):,} / {len(self.val):,} / {len(self.test):,} preference pairs, "
                f"{self.style.name} style; beta {cfg.beta}, log-probs {cfg.logp} over {cfg.response_mask} mask "
                f"tokens; reference: {reference}")  # fmt: skip


def finetune_dpo(cfg: DPOConfig, resume: bool = False, overwrite: bool = False,
                 on_step: Callable[[int], None] | None = None) -> RunResult:  # fmt: skip
    """Preference-tune `cfg.checkpoint` with DPO (or resume); returns the run folder and metrics."""
    job = DPOJob(cfg)
    result = run_finetune(job, resume, overwrite, on_step)
    result.reference = job.reference
    return result
