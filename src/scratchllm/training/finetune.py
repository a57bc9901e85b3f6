"""The one fine-tuning runner: every task (classify, instruct, DPO, and the next one) plugs into it.

A task is a `FinetuneJob`: how it reads its data, what model it trains (the checkpoint as is, or wrapped, as
the classifier's new head), which weights a full fine-tune trains, the `Task` the loop runs and any extra
files for the run folder. Everything else is here once, in this order:

    claim the run folder (refuse an output that overlaps an input, a changed setting on --resume)
    read the data                    before the model, so a bad file fails in a second, not after a download
    load the checkpoint (fp32), seed, build the task's model
    LoRA adapters (the one switch `lora`) or the task's own freezing
    the task's batches; a batch check; epochs -> steps
    open the run folder: config.yaml, tokenizer, the task's files; one line saying what will train
    fit (the shared loop: checkpoints, --resume, metrics, plots)
    a LoRA run with a causal-LM head: its unmerged adapter in PEFT's format (the folder holds merged weights)
    the task's finishing step (instruct: the test split's responses)

Nothing is written before the data, the model and the batch check have passed, so a failed command leaves
an existing run folder as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.files import atomic_write
from scratchllm.training.config import FinetuneSettings
from scratchllm.training.distributed import DistInfo, init_distributed, shutdown
from scratchllm.training.loop import RunResult, Task, claim_run_dir, fit, open_run_dir

PEFT_FOLDER = "peft-adapter"


class FinetuneJob:
    """What a fine-tuning task supplies to `run_finetune`; a new task is a subclass of about a page."""

    unit = "records"  # what the training split counts, for messages
    data_kind = "instructions"  # which named datasets --data may name (data/registry.py)
    causal_lm = True  # the trained model ends in the LM head (a LoRA run then exports a PEFT adapter)

    def __init__(self, cfg: FinetuneSettings):
        self.cfg = cfg
        self.where = cfg.data  # the data's name in messages (read() may set the resolved file)

    def read(self) -> None:
        """Read and split the data; runs before the model is loaded."""

    def model(self, backbone: torch.nn.Module, tokenizer) -> torch.nn.Module:
        """The model to train (default: the checkpoint's own); the torch seed is set just before."""
        return backbone

    def freeze(self, model: torch.nn.Module) -> None:
        """Which weights a full (non-LoRA) fine-tune trains (default: all)."""

    def task(self, model: torch.nn.Module, tokenizer, dist: DistInfo) -> tuple[Task, int]:
        """The loop's task and the number of training items, once adapters or freezing are in place."""
        raise NotImplementedError

    def files(self) -> dict[str, str]:
        """Extra run-folder files (name -> text), written with config.yaml."""
        return {}

    def describe(self) -> str:
        """What the run trains on, for the line printed before training."""
        return ""

    def finish(self, model: torch.nn.Module, tokenizer, run_dir: Path) -> None:
        """After training, on the main process only."""


def run_finetune(job: FinetuneJob, resume: bool = False, overwrite: bool = False,
                 on_step: Callable[[int], None] | None = None) -> RunResult:  # fmt: skip
    """Fine-tune as `job.cfg` says (or resume it); returns the run folder and metrics."""
    from scratchllm.checkpoints.load import load_for_finetuning
    from scratchllm.data.registry import local_path

    cfg = job.cfg
    dist = init_distributed(cfg.device)
    try:
        run_dir = Path(cfg.out_dir)
        # A named dataset's cached copy is an input too: --overwrite must never delete it.
        inputs = {"--checkpoint": cfg.checkpoint, "--data": local_path(cfg.data, job.data_kind),
                  "--tokenizer": cfg.tokenizer}  # fmt: skip
        replacing = claim_run_dir(run_dir, resume, overwrite, inputs, cfg) if dist.is_main else False
        job.read()
        backbone, tokenizer = load_for_finetuning(cfg.checkpoint, cfg.tokenizer, cfg.seed, dist.device)
        torch.manual_seed(cfg.seed)  # a new head and LoRA's A matrices start the same in every run
        model = job.model(backbone, tokenizer).to(dist.device)
        if cfg.lora:
            from scratchllm.models.lora import apply_lora

            apply_lora(model, cfg.lora_config())
        else:
            job.freeze(model)
        task, n_train = job.task(model, tokenizer, dist)
        rows = cfg.batch_size * cfg.grad_accum * dist.world_size
        if n_train < rows:
            raise ScratchLLMError(f"{job.where}: {n_train} training {job.unit}, fewer than a batch of {rows}")
        if cfg.epochs is not None:
            cfg.max_steps = cfg.epochs * (n_train // rows)
        if dist.is_main:
            open_run_dir(run_dir, replacing, cfg, tokenizer)
            for name, text in job.files().items():
                atomic_write(run_dir / name, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            how = "LoRA" if cfg.lora else getattr(cfg, "trainable", "all")
            print(f"{job.describe()}; {trainable:,} trainable parameters ({how}), {cfg.max_steps} steps")
        result = fit(model, task, cfg, run_dir, dist, resume, on_step)
        if dist.is_main:
            if cfg.lora and job.causal_lm:
                from scratchllm.checkpoints.peft import export_peft

                export_peft(model, run_dir / PEFT_FOLDER, base_name=cfg.checkpoint)
                print(f"LoRA adapter in PEFT's format: {run_dir / PEFT_FOLDER}")
            job.finish(model, tokenizer, run_dir)
        return result
    finally:
        shutdown(dist)
