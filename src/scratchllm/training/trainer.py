"""The pretraining loop (book ch. 5.2 and appendix D), with what a real run needs around it.

One optimizer step: draw a global batch of random windows from the training tokens (one seeded
generator, identical on every process; each process takes its own rows), run `grad_accum` micro-batches
forward and backward under autocast, clip the gradient norm, set the learning rate from the schedule,
and step AdamW. Decisions:
- Weight decay applies to matrices only, never to norms, biases or embeddings (they are not "weights"
  whose size should shrink).
- The data sampler's RNG and torch's RNG are saved in every checkpoint together with the step, so
  `resume=True` continues bit for bit (on CPU) as if the run had never stopped.
- Evaluation uses fixed, evenly spaced windows of each split; samples use their own seeded generator.
  Neither touches the training RNGs.
- Ctrl-C saves a checkpoint before leaving. Only rank 0 writes anything.
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

import numpy as np
import torch

from scratchllm.checkpoints.io import save_model
from scratchllm.data.pipeline import options_from, prepare_data
from scratchllm.errors import ScratchLLMError
from scratchllm.files import claim_output_folder
from scratchllm.hardware import resolve_dtype, utilisation
from scratchllm.models import Transformer, get_config
from scratchllm.models.stats import model_stats
from scratchllm.tokenizers.formats import OUR_FILE
from scratchllm.training.config import PretrainConfig
from scratchllm.training.distributed import DistInfo, barrier, init_distributed, mean_across, shutdown
from scratchllm.training.evaluate import perplexity, split_loss
from scratchllm.training.loss import cross_entropy, lm_loss
from scratchllm.training.schedule import lr_at
from scratchllm.training.state import TrainState, list_checkpoints, resume_latest, save_checkpoint

METRICS_FILE = "metrics.jsonl"


@dataclass
class RunResult:
    run_dir: Path
    state: TrainState
    evals: list[dict] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)


class LossModule(torch.nn.Module):
    """Model + loss in one forward, so DistributedDataParallel and torch.compile see the whole step."""

    def __init__(self, model: Transformer, fused: bool = True):
        super().__init__()
        self.model = model
        self.fused = fused

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return lm_loss(self.model, inputs, targets)
        return cross_entropy(self.model(inputs), targets)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay for 2-D weight matrices, none for norms, biases and embeddings."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        is_embedding = name.startswith(("tok_emb", "pos_emb"))
        (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, cfg: PretrainConfig, device: str) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def sample_batch(tokens: np.ndarray, n: int, seq_len: int, rng: torch.Generator) -> torch.Tensor:
    """n random windows of seq_len + 1 tokens (inputs and shifted targets) from a token array."""
    high = len(tokens) - seq_len - 1
    if high < 1:
        raise ScratchLLMError(f"training split has {len(tokens)} tokens, fewer than seq_len + 2 = {seq_len + 2}")
    starts = torch.randint(0, high + 1, (n,), generator=rng).tolist()
    return _windows(tokens, starts, seq_len)


def epoch_batch(tokens: np.ndarray, n: int, seq_len: int, step: int, seed: int) -> torch.Tensor:
    """The book's data loader as a function of the step: non-overlapping windows (stride = seq_len),
    shuffled once per epoch, the last incomplete batch of an epoch dropped. Stateless, so resuming at a
    step needs nothing else; small corpora are memorised this way, as in the book's figure."""
    n_windows = (len(tokens) - 1) // seq_len
    per_epoch = n_windows // n
    if per_epoch < 1:
        raise ScratchLLMError(f"training split has {n_windows} windows of {seq_len} tokens, fewer than a batch of {n}")
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed + epoch))
    picked = order[index * n : (index + 1) * n] * seq_len
    return _windows(tokens, picked.tolist(), seq_len)


def _windows(tokens: np.ndarray, starts: list[int], seq_len: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64))


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


def _autocast_dtype(cfg: PretrainConfig, device: str) -> torch.dtype | None:
    dtype = resolve_dtype(cfg.dtype, device)
    return None if dtype == torch.float32 else dtype


def sample_text(model, tokenizer, prompt: str, n_tokens: int) -> str:
    from scratchllm.generation.generate import GenerationConfig, generate

    ids = tokenizer.encode(prompt, allowed_special="all") or [tokenizer.eot_id or 0]
    cfg = GenerationConfig(
        max_new_tokens=n_tokens,
        temperature=0.8,
        top_k=50,
        seed=0,
        stop_ids=(tokenizer.eot_id,) if tokenizer.eot_id is not None else (),
    )
    with torch.no_grad():
        text = generate(model, [ids], cfg, tokenizer).texts[0]
    model.train()
    return prompt + text


def pretrain(cfg: PretrainConfig, resume: bool = False, on_step: Callable[[int], None] | None = None,
             overwrite: bool = False) -> RunResult:  # fmt: skip
    """Run (or resume) a pretraining run described by `cfg`; returns the run folder and metrics.

    A non-empty `cfg.out_dir` is continued with `resume`, replaced with `overwrite` (its old contents are
    deleted once data and model are ready, not before), and refused otherwise.
    """
    dist = init_distributed()
    try:
        return _pretrain(cfg, resume, on_step, dist, overwrite)
    finally:
        shutdown(dist)


def _claim_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Check the run folder against the user's intent; True when an old run will be replaced."""
    if resume:
        if run_dir.exists() and not run_dir.is_dir():
            raise ScratchLLMError(f"--out-dir {run_dir}: is a file, not a run folder")
        if not list_checkpoints(run_dir):
            raise ScratchLLMError(f"--resume: no checkpoint under {run_dir / 'checkpoints'}")
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


def _check_tokens(prepared, tokenizer) -> None:
    """The token file, its tokenizer and (through it) the model's vocabulary must belong together."""
    meta = prepared.meta
    if meta.vocab_size != tokenizer.vocab_size:
        raise ScratchLLMError(f"{prepared.folder}: meta.json says vocab_size {meta.vocab_size:,} but its tokenizer "
                              f"has {tokenizer.vocab_size:,} ids; prepare the data again")  # fmt: skip
    top = int(prepared.tokens.max()) if meta.n_tokens else 0
    if top >= tokenizer.vocab_size:
        raise ScratchLLMError(f"{prepared.folder}: tokens.bin holds id {top:,}, beyond the tokenizer's "
                              f"{tokenizer.vocab_size:,} ids; prepare the data again")  # fmt: skip


def _pretrain(cfg: PretrainConfig, resume: bool, on_step, dist: DistInfo, overwrite: bool = False) -> RunResult:
    run_dir = Path(cfg.out_dir)
    main = dist.is_main
    replacing = _claim_run_dir(run_dir, resume, overwrite) if main else False
    # Data: rank 0 prepares (or reuses) the token file, the others wait and then open it.
    opts = options_from(cfg)
    if main:
        prepared = prepare_data(opts, progress=cfg.progress, overwrite=overwrite)
    barrier(dist)
    if not main:
        prepared = prepare_data(opts, progress=False)
    tokenizer = prepared.tokenizer()
    _check_tokens(prepared, tokenizer)
    if replacing and run_dir.resolve() in (prepared.folder.resolve(), *prepared.folder.resolve().parents):
        raise ScratchLLMError(f"--overwrite: --out-dir {run_dir} holds the prepared data in use; choose another")
    model_config = get_config(cfg.model, **{**cfg.model_overrides, "vocab_size": tokenizer.vocab_size})
    seq_len = cfg.seq_len or model_config.context_length
    if seq_len > model_config.context_length:
        raise ScratchLLMError(f"seq_len {seq_len} exceeds the model's context length {model_config.context_length}")
    train_tokens, val_tokens = prepared.train, prepared.val

    device = dist.device
    torch.manual_seed(cfg.seed)
    model = Transformer(model_config).to(device)
    if cfg.init == "pytorch":
        # The book builds its GPTModel with PyTorch's default initialisation (embeddings N(0, 1), Linear
        # Kaiming-uniform); on a tiny corpus that memorises much faster than GPT-2's N(0, 0.02).
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.reset_parameters()
    optimizer = make_optimizer(model, cfg, device)
    sampler_rng = torch.Generator().manual_seed(cfg.seed)
    state = TrainState()
    if resume:
        say = print if main else (lambda _: None)
        state, folder = resume_latest(run_dir, model, optimizer, sampler_rng, say)
        say(f"resumed from {folder} (step {state.step})")
    train_model: torch.nn.Module = LossModule(model, cfg.fused_loss)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [dist.local_rank] if device != "cpu" else None
        train_model = DistributedDataParallel(train_model, device_ids=device_ids)
    if cfg.compile:
        train_model = torch.compile(train_model)
    amp = _autocast_dtype(cfg, device)
    device_type = torch.device(device).type
    if device_type == "cpu":
        from scratchllm.allocator import keep_freed_memory

        keep_freed_memory()  # every step reallocates the same large tensors: reuse their pages

    if main:
        if replacing:
            shutil.rmtree(run_dir)
            print(f"--overwrite: removed the previous contents of {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        tokenizer.save(run_dir / OUR_FILE)
    log = _Log(run_dir, main)
    stats = model_stats(model_config, seq_len)
    global_batch = cfg.batch_size * cfg.grad_accum * dist.world_size
    tokens_per_step = global_batch * seq_len
    if main:
        print(
            f"model {model_config.name}: {stats.params / 1e6:.2f} M parameters, context {model_config.context_length}; "
            f"data {prepared.meta.n_train:,} train / {prepared.meta.n_val:,} val tokens; "
            f"{global_batch} x {seq_len} tokens per step; {dist.world_size} process(es) on {device}, "
            f"{'autocast ' + str(amp).replace('torch.', '') if amp else 'fp32'}"
        )

    result = RunResult(run_dir, state)
    has_val = len(val_tokens) > seq_len
    if main and not has_val:
        print(f"note: no validation split ({len(val_tokens):,} validation tokens, fewer than seq_len + 1 = "
              f"{seq_len + 1}; val_fraction {cfg.val_fraction}): validation loss is not measured")  # fmt: skip

    def evaluate_and_sample(final: bool = False) -> None:
        if not main:
            return
        record = {"kind": "eval", "step": state.step, "tokens_seen": state.tokens_seen}
        record["train_loss"] = split_loss(model, train_tokens, seq_len, cfg.eval_batches, cfg.batch_size, amp)
        if has_val:
            record["val_loss"] = split_loss(model, val_tokens, seq_len, cfg.eval_batches, cfg.batch_size, amp)
            record["val_perplexity"] = perplexity(record["val_loss"])
        result.evals.append(record)
        log.write(record)
        val = f"val loss {record['val_loss']:.3f} (perplexity {record['val_perplexity']:.1f})" if has_val else "no val"
        bar.write(f"step {state.step:5d} | train loss {record['train_loss']:.3f} | {val}")
        if final or state.step % cfg.sample_every == 0:
            text = sample_text(model, tokenizer, cfg.sample_prompt, cfg.sample_tokens)
            result.samples.append(text)
            log.write({"kind": "sample", "step": state.step, "text": text})
            bar.write(f"--- sample at step {state.step} ---\n{text}\n---")

    def diverged(what: str) -> ScratchLLMError:
        bar.close()
        return ScratchLLMError(
            f"training diverged: {what} at step {state.step}; stopped without saving these weights, {run_dir} keeps "
            "the last good ones (continue from them with --resume); lower --lr or --grad-clip"
        )

    def checkpoint() -> None:
        # A diverged update can leave NaN weights one step before the loss shows it: never save those.
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise diverged("the weights hold NaN or infinity")
        if main:
            save_checkpoint(run_dir, model, optimizer, sampler_rng, state, cfg.to_dict(), cfg.keep_last)
            save_model(model, run_dir)  # the run folder's own weights: always the latest
        barrier(dist)

    from tqdm import tqdm

    bar = tqdm(
        total=cfg.max_steps, initial=state.step, desc="pretrain", unit="step", disable=not (main and cfg.progress)
    )
    model.train()
    window_start, window_tokens = time.perf_counter(), 0
    try:
        if state.step == 0:
            evaluate_and_sample()
        while state.step < cfg.max_steps:
            lr = lr_at(state.step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if cfg.sampling == "epochs":
                batch = epoch_batch(train_tokens, global_batch, seq_len, state.step, cfg.seed)
            else:
                batch = sample_batch(train_tokens, global_batch, seq_len, sampler_rng)
            rows = batch[dist.rank :: dist.world_size].to(device)
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                part = rows[micro * cfg.batch_size : (micro + 1) * cfg.batch_size]
                sync = not dist.enabled or micro == cfg.grad_accum - 1
                # Between micro-batches DDP need not average gradients; only the last one syncs.
                with train_model.no_sync() if not sync else contextlib.nullcontext():
                    with torch.autocast(device_type, dtype=amp or torch.float32, enabled=amp is not None):
                        loss = train_model(part[:, :-1], part[:, 1:])
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens_seen += tokens_per_step
            window_tokens += tokens_per_step
            train_loss = mean_across(loss_sum / cfg.grad_accum, dist).item()
            if not math.isfinite(train_loss):
                raise diverged(f"the training loss became {train_loss} (learning rate {lr:.3g})")
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                elapsed = time.perf_counter() - window_start
                tps = window_tokens / elapsed
                mfu = utilisation(tps * stats.train_flops_per_token, amp or torch.float32, device) if main else 0.0
                log.write(
                    {
                        "kind": "train",
                        "step": state.step,
                        "tokens_seen": state.tokens_seen,
                        "loss": train_loss,
                        "lr": lr,
                        "tokens_per_s": tps,
                        "mfu": mfu,
                    }
                )
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tps:.0f}", mfu=f"{mfu:.0%}")
                window_start, window_tokens = time.perf_counter(), 0
            paused = time.perf_counter()
            if state.step % cfg.eval_every == 0 and state.step < cfg.max_steps:
                evaluate_and_sample()
            if state.step % cfg.save_every == 0 and state.step < cfg.max_steps:
                checkpoint()
            window_start += time.perf_counter() - paused  # tokens/s and MFU count training time only
            if on_step is not None:
                on_step(state.step)
    except KeyboardInterrupt:
        bar.close()
        if main:
            print(f"\ninterrupted at step {state.step}: saving a checkpoint (continue with --resume)")
        checkpoint()
        raise
    bar.close()
    evaluate_and_sample(final=True)
    checkpoint()
    if main:
        from scratchllm.training.plot import plot_losses

        if plot_losses(result.evals, run_dir / "loss.png") is None:
            print(f"note: {run_dir / 'loss.png'} not written (matplotlib is not installed: pip install matplotlib)")
    return result
