"""The training loop every task shares: pretraining (book ch. 5, appendix D), classification (ch. 6), ...

A task plugs in by subclassing `Task`: it draws the global batch of a step, computes the loss of a
micro-batch, and evaluates; `fit` does everything else, the same way for every task:
- One optimizer step: the task's global batch (identical on every process; each takes its own rows) is
  run as `grad_accum` micro-batches forward and backward under autocast; the gradient norm is clipped, the
  learning rate set from the schedule (warm-up + cosine), and AdamW steps over the trainable parameters.
- Weight decay applies to weight matrices only, never to norms, biases or embeddings (they are not
  "weights" whose size should shrink). Frozen parameters (requires_grad False) get no optimizer state.
- Checkpoints hold the model, optimizer state, torch's RNG and the task's sampler RNG, so `resume`
  continues bit for bit (on CPU); they are atomic, damaged ones are skipped on resume, and weights that
  became NaN are never saved. Ctrl-C saves a checkpoint before leaving. Only rank 0 writes logs.
- Under torchrun the model is replicated (DDP) or sharded (`strategy: fsdp`, `distributed.Sharded`: each
  process then also writes its own checkpoint shard, and every process evaluates).
- Progress bar, metrics.jsonl (plus TensorBoard when installed), tokens/s and MFU (training time only),
  and the loss (and accuracy) plots at the end, drawn from metrics.jsonl so they cover resumed runs whole.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from scratchllm.checkpoints.io import CONFIG_FILE, save_model
from scratchllm.errors import ScratchLLMError
from scratchllm.files import atomic_write, claim_output_folder, refuse_overlap
from scratchllm.hardware import peak_memory_mib, resolve_dtype, utilisation
from scratchllm.models.moe import take_router_aux_loss
from scratchllm.tokenizers.formats import save_tokenizer
from scratchllm.training.config import TrainSettings
from scratchllm.training.distributed import DistInfo, Sharded, all_true, barrier, mean_across
from scratchllm.training.schedule import lr_at
from scratchllm.training.state import (
    SHARDS,
    TrainState,
    checkpoint_tmp,
    finish_checkpoint,
    list_checkpoints,
    local_part,
    resume_latest,
    save_checkpoint,
    save_shards,
)

METRICS_FILE = "metrics.jsonl"
Batch = tuple[torch.Tensor, ...]


class Task:
    """What a task gives the loop. Batches are tuples of tensors whose first dimension is the row."""

    name = "train"  # the progress bar's label
    flops_per_token = 0.0  # training FLOPs per token, for MFU (0: not reported)

    def batch(self, step: int, rows: int, rng: torch.Generator) -> Batch:
        """The global batch of optimizer step `step`: `rows` rows, drawn with `rng` (saved in checkpoints)."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, *batch: torch.Tensor) -> torch.Tensor:
        """Mean loss of one micro-batch (inside autocast; the only code DDP and torch.compile see)."""
        raise NotImplementedError

    def tokens(self, batch: Batch) -> int:
        """Tokens a batch trains on, for tokens/s."""
        return batch[0].numel()

    def evaluate(self, model: torch.nn.Module, step: int, final: bool, say: Callable[[str], None]) -> dict:
        """Metrics at `step` (at least `train_loss`; a `sample` text is logged apart), printing what a user sees."""
        raise NotImplementedError


@dataclass
class RunResult:
    run_dir: Path
    state: TrainState
    evals: list[dict] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    reference: torch.nn.Module | None = None  # DPO: the frozen reference model it trained against


class LossModule(torch.nn.Module):
    """Model + the task's loss in one forward, so DistributedDataParallel and torch.compile see the whole step."""

    def __init__(self, model: torch.nn.Module, loss: Callable[..., torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        loss = self.loss(self.model, *batch)
        # A mixture of experts adds its load-balancing loss, whatever the task (transformers does the same).
        coef = getattr(getattr(self.model, "config", None), "router_aux_loss_coef", 0.0)
        aux = take_router_aux_loss(self.model) if coef else None
        return loss if aux is None else loss + coef * aux


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay for trainable weight matrices, none for norms, biases and embedding tables."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainSettings, fused: bool = True) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise ScratchLLMError("nothing to train: every parameter of the model is frozen")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def autocast_dtype(cfg: TrainSettings, device: str) -> torch.dtype | None:
    dtype = resolve_dtype(cfg.dtype, device)
    return None if dtype == torch.float32 else dtype


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool, inputs: dict | None = None,
                  cfg: TrainSettings | None = None) -> bool:  # fmt: skip
    """Check the run folder against the user's intent and the command's `inputs` (flag -> path, which the
    run folder may not be, contain or sit inside); True when an old run will be replaced. A resumed run must
    keep `cfg`'s fields that shape the model or its data: checked here, before anything is written."""
    refuse_overlap(run_dir, "--out-dir", inputs or {})
    if resume:
        if run_dir.exists() and not run_dir.is_dir():
            raise ScratchLLMError(f"--out-dir {run_dir}: is a file, not a run folder")
        if not list_checkpoints(run_dir):
            raise ScratchLLMError(f"--resume: no checkpoint under {run_dir / 'checkpoints'}")
        if cfg is not None:
            _check_resumable(run_dir, cfg)
        return False
    try:
        return claim_output_folder(run_dir, overwrite, "new run")
    except ScratchLLMError as e:
        if "not empty" not in str(e):
            raise
        raise ScratchLLMError(
            f"--out-dir {run_dir} already holds files (a run?); pass --resume to continue it, --overwrite to "
            "replace it, or choose another --out-dir"
        ) from None


def _check_resumable(run_dir: Path, cfg: TrainSettings) -> None:
    from scratchllm.training.config import load_config_file

    saved_file = run_dir / "config.yaml"
    if not saved_file.exists():
        return
    saved, now = load_config_file(saved_file, type(cfg)), cfg.to_dict()
    for name in cfg.fixed_on_resume:
        if name in saved and saved[name] != now[name]:
            flag = "--" + name.replace("_", "-")
            raise ScratchLLMError(f"--resume: {flag} {now[name]!r} differs from the run's {saved[name]!r} "
                                  f"({saved_file}); a run resumes with the settings it started with, or start a "
                                  "new one with another --out-dir")  # fmt: skip


def open_run_dir(run_dir: Path, replacing: bool, cfg: TrainSettings, tokenizer) -> None:
    """Rank 0, once data and model are ready: clear a replaced run, write the config and the tokenizer."""
    if replacing:
        shutil.rmtree(run_dir)
        print(f"--overwrite: removed the previous contents of {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    save_tokenizer(tokenizer, run_dir)


class _Log:
    """Appends JSON lines to metrics.jsonl (rank 0) and mirrors scalars to TensorBoard when installed."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step",):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record["step"])


def epoch_rows(n_items: int, rows: int, step: int, seed: int) -> torch.Tensor:
    """Item indices of step `step`'s batch in epochs: reshuffled every epoch (seed + epoch), the last
    incomplete batch dropped, as a shuffling DataLoader with drop_last. A function of the step, so resuming
    at a step needs no sampler state."""
    epoch, index = divmod(step, n_items // rows)
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed + epoch))
    return order[index * rows : (index + 1) * rows]


def _logged_evals(path: Path) -> list[dict]:
    """Evaluation records of metrics.jsonl by step; a step evaluated again after a resume keeps its last record."""
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "eval":
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def _rows(batch: Batch, sl: slice) -> Batch:
    return tuple(t[sl] for t in batch)


def to_device(batch: Batch, device: str | torch.device) -> Batch:
    """A host batch on `device`. For a GPU it is copied from pinned (page-locked) memory without blocking, so
    the copy overlaps the kernels already queued instead of stalling the host."""
    if torch.device(device).type != "cuda":
        return tuple(t.to(device) for t in batch)
    return tuple(t.pin_memory().to(device, non_blocking=True) if t.device.type == "cpu" else t.to(device)
                 for t in batch)  # fmt: skip


def fit(model: torch.nn.Module, task: Task, cfg: TrainSettings, run_dir: Path, dist: DistInfo, resume: bool = False,
        on_step: Callable[[int], None] | None = None) -> RunResult:  # fmt: skip
    """Train `model` (its trainable parameters) on `task` as `cfg` says, writing checkpoints into `run_dir`."""
    main, device = dist.is_main, dist.device
    fsdp = dist.enabled and cfg.strategy == "fsdp"
    sharded = Sharded(model, dist) if fsdp else None  # before the optimizer: it must see the shards
    optimizer = make_optimizer(model, cfg, fused=not fsdp)
    sampler_rng = torch.Generator().manual_seed(cfg.seed)
    state = TrainState()
    say = print if main else (lambda _: None)
    if resume:
        apply = sharded.load_full_state(optimizer) if sharded else None
        state, folder = resume_latest(run_dir, model, optimizer, sampler_rng, say, apply)
        say(f"resumed from {folder} (step {state.step})")
    train_model: torch.nn.Module = LossModule(model, task.loss)
    if dist.enabled and not fsdp:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(train_model, device_ids=[dist.local_rank] if device != "cpu" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    amp = autocast_dtype(cfg, device)
    device_type = torch.device(device).type
    if device_type == "cpu":
        from scratchllm.allocator import keep_freed_memory

        keep_freed_memory()  # every step reallocates the same large tensors: reuse their pages
    trainable = [p for p in model.parameters() if p.requires_grad]
    log = _Log(run_dir, main)
    global_rows = cfg.batch_size * cfg.grad_accum * dist.world_size
    result = RunResult(run_dir, state)

    from tqdm import tqdm

    bar = tqdm(total=cfg.max_steps, initial=state.step, desc=task.name, unit="step",
               disable=not (main and cfg.progress))  # fmt: skip

    def evaluate(final: bool = False) -> None:
        if main or fsdp:  # a sharded forward needs every process
            record = {"kind": "eval", "step": state.step, "tokens_seen": state.tokens_seen}
            record.update(task.evaluate(model, state.step, final, bar.write if main else (lambda _: None)))
        if main:
            sample = record.pop("sample", None)  # generated text goes in a record of its own
            result.evals.append(record)
            log.write(record)
            if sample is not None:
                result.samples.append(sample)
                log.write({"kind": "sample", "step": state.step, "text": sample})

    def diverged(what: str) -> ScratchLLMError:
        bar.close()
        return ScratchLLMError(
            f"training diverged: {what} at step {state.step}; stopped without saving these weights, {run_dir} keeps "
            "the last good ones (continue from them with --resume); lower --lr or --grad-clip"
        )

    def checkpoint(final: bool = False) -> None:
        # A diverged update can leave NaN weights one step before the loss shows it: never save those.
        if not all_true(all(bool(torch.isfinite(local_part(p)).all()) for p in trainable), dist):
            raise diverged("the weights hold NaN or infinity")
        if sharded:
            sharded_checkpoint(final)
        elif main:
            save_checkpoint(run_dir, model, optimizer, sampler_rng, state, cfg.to_dict(), cfg.keep_last)
            save_model(model, run_dir)  # the run folder's own weights: always the latest
        barrier(dist)

    def sharded_checkpoint(final: bool) -> None:
        """Every process writes its shard into the checkpoint; at the end the full weights are gathered on
        rank 0 for the run folder's model.safetensors (what generate and convert read)."""
        if main:
            checkpoint_tmp(run_dir, state.step)
        barrier(dist)
        tmp = checkpoint_tmp(run_dir, state.step, create=False)
        opt_meta = save_shards(model, optimizer, tmp / SHARDS, dist.rank, dist.world_size)
        barrier(dist)
        if main:
            atomic_write(tmp / CONFIG_FILE, lambda t: t.write_text(json.dumps(model.config.to_dict(), indent=2)))
            finish_checkpoint(tmp, sampler_rng, state, cfg.to_dict(), cfg.keep_last, opt_meta)
        if final:
            full_weights = sharded.full_weights()
            if main:
                save_model(SimpleNamespace(config=model.config, state_dict=lambda: full_weights), run_dir)

    model.train()
    window_start, window_tokens = time.perf_counter(), 0
    try:
        if state.step == 0:
            evaluate()
        while state.step < cfg.max_steps:
            lr = lr_at(state.step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = task.batch(state.step, global_rows, sampler_rng)
            step_tokens = task.tokens(batch)
            rows = to_device(_rows(batch, slice(dist.rank, None, dist.world_size)), device)
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                part = _rows(rows, slice(micro * cfg.batch_size, (micro + 1) * cfg.batch_size))
                sync = not dist.enabled or micro == cfg.grad_accum - 1
                # Between micro-batches neither DDP nor FSDP need to reduce gradients; only the last one syncs.
                if fsdp:
                    model.set_requires_gradient_sync(sync)
                with train_model.no_sync() if not (sync or fsdp) else contextlib.nullcontext():
                    with torch.autocast(device_type, dtype=amp or torch.float32, enabled=amp is not None):
                        loss = train_model(*part)
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens_seen += step_tokens
            window_tokens += step_tokens
            train_loss = mean_across(loss_sum / cfg.grad_accum, dist).item()
            if not math.isfinite(train_loss):
                raise diverged(f"the training loss became {train_loss} (learning rate {lr:.3g})")
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                tps = window_tokens / (time.perf_counter() - window_start)
                record = {"kind": "train", "step": state.step, "tokens_seen": state.tokens_seen, "loss": train_loss,
                          "lr": lr, "tokens_per_s": tps,
                          "peak_memory_mib": round(peak_memory_mib(device), 1)}  # fmt: skip
                if main and task.flops_per_token:
                    record["mfu"] = utilisation(tps * task.flops_per_token, amp or torch.float32, device)
                log.write(record)
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tps:.0f}",
                                **({"mfu": f"{record['mfu']:.0%}"} if "mfu" in record else {}))  # fmt: skip
                window_start, window_tokens = time.perf_counter(), 0
            paused = time.perf_counter()
            if state.step % cfg.eval_every == 0 and state.step < cfg.max_steps:
                evaluate()
            if state.step % cfg.save_every == 0 and state.step < cfg.max_steps:
                checkpoint()
            window_start += time.perf_counter() - paused  # tokens/s and MFU count training time only
            if on_step is not None:
                on_step(state.step)
    except KeyboardInterrupt:
        bar.close()
        say(f"\ninterrupted at step {state.step}: saving a checkpoint (continue with --resume)")
        checkpoint(final=True)
        raise
    bar.close()
    evaluate(final=True)
    checkpoint(final=True)
    if main:
        from scratchllm.training.plot import plot_curves

        evals = _logged_evals(log.path)  # the whole run, across resumes
        if plot_curves(evals, run_dir / "loss.png") is None:
            print(f"note: {run_dir / 'loss.png'} not written (matplotlib is not installed: pip install matplotlib)")
        if any("train_accuracy" in e for e in evals):
            plot_curves(evals, run_dir / "accuracy.png", "accuracy")
    return result
