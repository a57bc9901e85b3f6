"""Instruction fine-tuning (book ch. 7), with or without LoRA (appendix E), as a task of the shared loop.

`InstructJob` is the task's page for the one fine-tuning runner (`training/finetune.py`): it formats the
records with a prompt style (`scratchllm.prompts`) and splits them as the book does (85 / 10 / 5 in file
order); the runner trains every weight, or LoRA adapters on a frozen model (`--lora`). Batches are the
book's: the training split reshuffled every epoch, collated with one end-of-text token and -100 padding
(`data.instructions.collate`). Evaluation reports the
loss and perplexity of the first `eval_batches` batches of the training and validation splits and prints
the responses to the first `samples` validation instructions. At the end the test split's responses are
generated with the style's stop conditions and written to `test-responses.json` in the book's shape (each
record plus `model_response`), ready for `evaluate judge`.

The run folder holds the full weights (a LoRA run's merged into them, its unmerged adapter in PEFT's format
in `peft-adapter/`), the tokenizer and `prompt_style.json`, so `generate`, `chat` and `serve` use the style
without being told. A LoRA run's checkpoints hold only the adapters and their optimizer state; resuming
rebuilds the frozen base from `--checkpoint` and continues bit-exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from scratchllm.data.instructions import Encoded, Example, book_split, collate, encode, read_examples, write_responses
from scratchllm.errors import ScratchLLMError
from scratchllm.generation.respond import respond
from scratchllm.prompts import STYLE_FILE, PromptStyle, get_style
from scratchllm.training.config import InstructConfig
from scratchllm.training.finetune import FinetuneJob, run_finetune
from scratchllm.training.loop import RunResult, Task, epoch_rows
from scratchllm.training.loss import cross_entropy, fused_linear_cross_entropy

RESPONSES_FILE = "test-responses.json"


class InstructTask(Task):
    name = "instruct"

    def __init__(self, splits: dict[str, list[Encoded]], examples: dict[str, list[Example]], tokenizer,
                 style: PromptStyle, stop_ids: tuple[int, ...], cfg: InstructConfig):  # fmt: skip
        self.splits, self.examples, self.tokenizer, self.style = splits, examples, tokenizer, style
        self.stop_ids, self.cfg = stop_ids, cfg
        self.pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0

    def collate(self, items: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        prompt_lens = [e.prompt_len for e in items] if self.cfg.mask_prompt else None
        return collate([e.ids for e in items], self.pad_id, self.cfg.max_length, prompt_lens)

    def batch(self, step: int, rows: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        train = self.splits["train"]
        return self.collate([train[i] for i in epoch_rows(len(train), rows, step, self.cfg.seed).tolist()])

    def loss(self, model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return fused_linear_cross_entropy(model.hidden(inputs), model.head_weight, targets)

    def tokens(self, batch) -> int:
        return int((batch[1] != -100).sum())

    @torch.no_grad()
    def split_loss(self, model, name: str) -> float | None:
        items = self.splits[name][: self.cfg.eval_batches * self.cfg.batch_size]
        if not items:
            return None
        total, count = 0.0, 0
        for i in range(0, len(items), self.cfg.batch_size):
            inputs, targets = self.collate(items[i : i + self.cfg.batch_size])
            device = model.device
            n = int((targets != -100).sum())
            total += cross_entropy(model(inputs.to(device)), targets.to(device)).item() * n
            count += n
        return total / max(count, 1)

    def evaluate(self, model, step: int, final: bool, say) -> dict:
        was_training = model.training
        model.eval()
        record = {}
        for name in ("train", "val"):
            loss = self.split_loss(model, name)
            if loss is not None:
                record[f"{name}_loss"], record[f"{name}_perplexity"] = loss, math.exp(min(loss, 50))
        val = f" | val loss {record['val_loss']:.3f}" if "val_loss" in record else ""
        say(f"step {step:5d} | train loss {record['train_loss']:.3f}{val}")
        shown = self.examples["val"][: self.cfg.samples]
        if shown:
            answers = respond(model, self.tokenizer, [ex.prompt for ex in shown], self.stop_ids,
                              self.style.stop_strings, self.cfg.response_tokens)  # fmt: skip
            record["sample"] = "\n".join(f"{ex.prompt}{a}" for ex, a in zip(shown, answers))
            say(f"--- response at step {step} ---\n{record['sample']}\n---")
        model.train(was_training)
        return record


class InstructJob(FinetuneJob):
    """Chapter 7: instruction records in a prompt style, next-token loss on prompt and response."""

    def read(self) -> None:
        from scratchllm.data.registry import dataset_file

        self.style = get_style(self.cfg.style)
        self.where = dataset_file(self.cfg.data, self.data_kind)
        self.train, self.val, self.test = book_split(read_examples(self.where, self.style))

    def task(self, model, tokenizer, dist):
        from scratchllm.generation.stream import end_of_text_ids

        cfg = self.cfg
        limit = min(cfg.max_length or model.config.context_length, model.config.context_length)
        cfg.max_length = limit
        parts = (("train", self.train), ("val", self.val), ("test", self.test))
        self.splits = splits = {name: encode(part, tokenizer) for name, part in parts}
        if cfg.mask_prompt:  # an example whose prompt fills the window has no response token to learn
            keep = [i for i, e in enumerate(splits["train"]) if e.prompt_len - 1 < limit]
            if not keep:
                raise ScratchLLMError(f"--mask-prompt: every training prompt of {self.where} is at least {limit + 1} "
                                      "tokens, so no response token is left to learn within --max-length; raise it "
                                      "or drop --mask-prompt")  # fmt: skip
            if len(keep) < len(self.train):
                print(f"note: --mask-prompt: {len(self.train) - len(keep)} training records whose prompt fills all "
                      f"{limit} tokens are left out (nothing of their response would be learned)")  # fmt: skip
                self.train, splits["train"] = [self.train[i] for i in keep], [splits["train"][i] for i in keep]
        self.stop_ids = end_of_text_ids(tokenizer)
        examples = {"train": self.train, "val": self.val, "test": self.test}
        return InstructTask(splits, examples, tokenizer, self.style, self.stop_ids, cfg), len(self.train)

    def files(self) -> dict[str, str]:
        return {STYLE_FILE: json.dumps({"style": self.style.name})}

    def describe(self) -> str:
        limit = self.cfg.max_length
        longest = max(len(e.ids) for e in self.splits["train"]) + 1
        cut = f" (cut to {limit})" if longest > limit else ""
        return (f"data {len(self.train):,} / {len(self.val):,} / {len(self.test):,} records (train / validation / "
                f"test), {self.style.name} style, longest {longest} tokens{cut}")  # fmt: skip

    def finish(self, model, tokenizer, run_dir: Path) -> None:
        if self.test:
            prompts = [e.prompt for e in self.test]
            answers = respond(model, tokenizer, prompts, self.stop_ids, self.style.stop_strings,
                              self.cfg.response_tokens, progress=self.cfg.progress)  # fmt: skip
            write_responses(run_dir / RESPONSES_FILE, self.test, answers)
            print(f"test responses: {run_dir / RESPONSES_FILE} ({len(self.test)} records)")


def finetune_instruct(cfg: InstructConfig, resume: bool = False, overwrite: bool = False,
                      on_step: Callable[[int], None] | None = None) -> RunResult:  # fmt: skip
    """Instruction-tune as `cfg` says (or resume); writes the run folder and the test split's responses."""
    return run_finetune(InstructJob(cfg), resume, overwrite, on_step)
