"""Instruction fine-tuning (book ch. 7), with or without LoRA (appendix E), as a task of the shared loop.

`finetune_instruct` loads any `--checkpoint`, formats the records with a prompt style (`scratchllm.prompts`),
splits them as the book does (85 / 10 / 5 in file order), and trains on `fit`: full fine-tuning, or LoRA
adapters on a frozen model (`--lora`). Batches are the book's: the training split reshuffled every epoch,
collated with one end-of-text token and -100 padding (`data.instructions.collate`). Evaluation reports the
loss and perplexity of the first `eval_batches` batches of the training and validation splits and prints
the responses to the first `samples` validation instructions. At the end the test split's responses are
generated with the style's stop conditions and written to `test-responses.json` in the book's shape (each
record plus `model_response`), ready for `evaluate judge`.

The run folder holds the full weights (a LoRA run's merged into them, its unmerged adapter in PEFT's format
in `peft-adapter/`), the tokenizer and `prompt_style.json`,
so `generate`, `chat` and `serve` use the style without being told. A LoRA run's checkpoints hold only the
adapters and their optimizer state; resuming rebuilds the frozen base from `--checkpoint` and continues
bit-exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from scratchllm.data.instructions import Encoded, Example, book_split, collate, encode, read_examples
from scratchllm.errors import ScratchLLMError
from scratchllm.files import atomic_write
from scratchllm.prompts import STYLE_FILE, PromptStyle, get_style
from scratchllm.training.config import InstructConfig
from scratchllm.training.distributed import init_distributed, shutdown
from scratchllm.training.loop import RunResult, Task, claim_run_dir, epoch_rows, fit, open_run_dir
from scratchllm.training.loss import cross_entropy, fused_linear_cross_entropy

BOOK_DATA_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/"
                 "instruction-data.json")  # fmt: skip
RESPONSES_FILE = "test-responses.json"
PEFT_FOLDER = "peft-adapter"


def named_instructions(name: str) -> Path:
    """`book-instructions`: the book's 1,100 instruction records, downloaded once into the cache."""
    from scratchllm.hub import cache_dir, download_file

    if name != "book-instructions":
        raise ScratchLLMError(f"--data {name}: no such file, and not a named dataset (book-instructions)")
    target = cache_dir() / "datasets" / name / "instruction-data.json"
    return target if target.exists() else download_file(BOOK_DATA_URL, target)


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
            answers = respond(model, self.tokenizer, shown, self.stop_ids, self.style, self.cfg.response_tokens)
            record["sample"] = "\n".join(f"{ex.prompt}{a}" for ex, a in zip(shown, answers))
            say(f"--- response at step {step} ---\n{record['sample']}\n---")
        model.train(was_training)
        return record


def respond(model, tokenizer, examples: list[Example], stop_ids: tuple[int, ...], style: PromptStyle,
            max_new_tokens: int, batch: int = 8, progress: bool = False) -> list[str]:  # fmt: skip
    """Greedy responses to `examples`, batched on the engine, ending at the style's stop conditions."""
    from tqdm import tqdm

    from scratchllm.generation.engine import Engine, GenerationConfig

    was_training = model.training
    model.eval()
    context = model.config.context_length
    engine = Engine(model, tokenizer, max_batch=batch, prepare=False)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=stop_ids, stop_strings=style.stop_strings,
                           overflow="slide")  # fmt: skip
    requests = []
    for ex in examples:
        ids = tokenizer.encode(ex.prompt, allowed_special="all")[-(context - 1) :]
        requests.append(engine.submit(ids, cfg))
    bar = tqdm(total=len(requests), desc="responses", unit="record", disable=not progress)
    done = 0
    while not engine.idle:
        engine.step()
        finished = sum(r.done for r in requests)
        bar.update(finished - done)
        done = finished
    bar.close()
    model.train(was_training)
    return [r.text.strip() for r in requests]


def write_responses(path: Path, examples: list[Example], answers: list[str]) -> None:
    records = [{**ex.record, "model_response": a} for ex, a in zip(examples, answers)]
    text = json.dumps(records, indent=1, ensure_ascii=False)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def finetune_instruct(cfg: InstructConfig, resume: bool = False, overwrite: bool = False,
                      on_step: Callable[[int], None] | None = None) -> RunResult:  # fmt: skip
    """Instruction-tune as `cfg` says (or resume); writes the run folder and the test split's responses."""
    from scratchllm.checkpoints.load import load_for_finetuning
    from scratchllm.generation.stream import end_of_text_ids

    dist = init_distributed(cfg.device)
    try:
        run_dir = Path(cfg.out_dir)
        replacing = claim_run_dir(run_dir, resume, overwrite, {"--checkpoint": cfg.checkpoint, "--data": cfg.data,
                                   "--tokenizer": cfg.tokenizer}, cfg) if dist.is_main else False  # fmt: skip
        style = get_style(cfg.style)
        path = cfg.data if Path(cfg.data).exists() else named_instructions(cfg.data)
        train, val, test = book_split(read_examples(path, style))
        model, tokenizer = load_for_finetuning(cfg.checkpoint, cfg.tokenizer, cfg.seed, dist.device)
        if cfg.lora:
            from scratchllm.models.lora import apply_lora

            torch.manual_seed(cfg.seed)
            apply_lora(model, cfg.lora_config())
        limit = min(cfg.max_length or model.config.context_length, model.config.context_length)
        cfg.max_length = limit
        splits = {name: encode(part, tokenizer) for name, part in (("train", train), ("val", val), ("test", test))}
        if cfg.mask_prompt:  # an example whose prompt fills the window has no response token to learn
            keep = [i for i, e in enumerate(splits["train"]) if e.prompt_len - 1 < limit]
            if not keep:
                raise ScratchLLMError(f"--mask-prompt: every training prompt of {path} is at least {limit + 1} tokens, "
                                      "so no response token is left to learn within --max-length; raise it or drop "
                                      "--mask-prompt")  # fmt: skip
            if len(keep) < len(train):
                print(f"note: --mask-prompt: {len(train) - len(keep)} training records whose prompt fills all "
                      f"{limit} tokens are left out (nothing of their response would be learned)")  # fmt: skip
                train, splits["train"] = [train[i] for i in keep], [splits["train"][i] for i in keep]
        rows = cfg.batch_size * cfg.grad_accum * dist.world_size
        if len(train) < rows:
            raise ScratchLLMError(f"{path}: {len(train)} training records, fewer than a batch of {rows}")
        if cfg.epochs is not None:
            cfg.max_steps = cfg.epochs * (len(train) // rows)
        stop_ids = end_of_text_ids(tokenizer)
        task = InstructTask(splits, {"train": train, "val": val, "test": test}, tokenizer, style, stop_ids, cfg)
        if dist.is_main:
            open_run_dir(run_dir, replacing, cfg, tokenizer)
            atomic_write(run_dir / STYLE_FILE, lambda tmp: tmp.write_text(json.dumps({"style": style.name})))
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            longest = max(len(e.ids) for e in splits["train"]) + 1
            cut = f" (cut to {limit})" if longest > limit else ""
            print(f"data {len(train):,} / {len(val):,} / {len(test):,} records (train / validation / test), "
                  f"{style.name} style, longest {longest} tokens{cut}; {trainable:,} trainable parameters "
                  f"({'LoRA' if cfg.lora else 'all'}), {cfg.max_steps} steps")  # fmt: skip
        result = fit(model, task, cfg, run_dir, dist, resume, on_step)
        if dist.is_main and cfg.lora:  # the unmerged adapter for peft users; the run folder holds merged weights
            from scratchllm.checkpoints.peft import export_peft

            export_peft(model, run_dir / PEFT_FOLDER, base_name=cfg.checkpoint)
            print(f"LoRA adapter in PEFT's format: {run_dir / PEFT_FOLDER}")
        if dist.is_main and test:
            answers = respond(model, tokenizer, test, stop_ids, style, cfg.response_tokens, progress=cfg.progress)
            write_responses(run_dir / RESPONSES_FILE, test, answers)
            print(f"test responses: {run_dir / RESPONSES_FILE} ({len(test)} records)")
        return result
    finally:
        shutdown(dist)
