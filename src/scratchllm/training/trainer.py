"""Pretraining (book ch. 5.2 and appendix D) as a task of the shared training loop (`training/loop.py`).

The task: random windows of `seq_len + 1` tokens from the prepared training tokens (or the book's fixed
windows reshuffled every epoch), the fused head + cross-entropy loss, and evaluation on fixed, evenly spaced
windows of each split with a generated sample now and then (its own seeded generator: neither touches the
training RNGs). `pretrain` prepares the data, builds a fresh model and hands both to `fit`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from scratchllm.data.pipeline import options_from, prepare_data
from scratchllm.errors import ScratchLLMError
from scratchllm.models import Transformer, get_config
from scratchllm.models.stats import model_stats
from scratchllm.training.config import PretrainConfig
from scratchllm.training.distributed import barrier, init_distributed, shutdown
from scratchllm.training.evaluate import perplexity, split_loss
from scratchllm.training.loop import RunResult, Task, autocast_dtype, claim_run_dir, epoch_rows, fit, open_run_dir
from scratchllm.training.loss import cross_entropy, lm_loss


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
    if n_windows < n:
        raise ScratchLLMError(f"training split has {n_windows} windows of {seq_len} tokens, fewer than a batch of {n}")
    return _windows(tokens, (epoch_rows(n_windows, n, step, seed) * seq_len).tolist(), seq_len)


def _windows(tokens: np.ndarray, starts: list[int], seq_len: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64))


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


class PretrainTask(Task):
    name = "pretrain"

    def __init__(self, cfg: PretrainConfig, prepared, tokenizer, seq_len: int, amp: torch.dtype | None, flops: float):
        self.cfg, self.tokenizer, self.seq_len, self.amp = cfg, tokenizer, seq_len, amp
        self.train_tokens, self.val_tokens = prepared.train, prepared.val
        self.has_val = len(self.val_tokens) > seq_len
        self.flops_per_token = flops

    def batch(self, step: int, rows: int, rng: torch.Generator) -> tuple[torch.Tensor]:
        if self.cfg.sampling == "epochs":
            return (epoch_batch(self.train_tokens, rows, self.seq_len, step, self.cfg.seed),)
        return (sample_batch(self.train_tokens, rows, self.seq_len, rng),)

    def loss(self, model, windows: torch.Tensor) -> torch.Tensor:
        inputs, targets = windows[:, :-1], windows[:, 1:]
        return lm_loss(model, inputs, targets) if self.cfg.fused_loss else cross_entropy(model(inputs), targets)

    def tokens(self, batch) -> int:
        return batch[0].shape[0] * (batch[0].shape[1] - 1)

    def evaluate(self, model, step: int, final: bool, say) -> dict:
        cfg = self.cfg

        def loss_on(tokens) -> float:
            return split_loss(model, tokens, self.seq_len, cfg.eval_batches, cfg.batch_size, self.amp)

        record = {"train_loss": loss_on(self.train_tokens)}
        val = "no val"
        if self.has_val:
            record["val_loss"] = loss_on(self.val_tokens)
            record["val_perplexity"] = perplexity(record["val_loss"])
            val = f"val loss {record['val_loss']:.3f} (perplexity {record['val_perplexity']:.1f})"
        say(f"step {step:5d} | train loss {record['train_loss']:.3f} | {val}")
        if final or step % cfg.sample_every == 0:
            record["sample"] = sample_text(model, self.tokenizer, cfg.sample_prompt, cfg.sample_tokens)
            say(f"--- sample at step {step} ---\n{record['sample']}\n---")
        return record


def pretrain(cfg: PretrainConfig, resume: bool = False, on_step: Callable[[int], None] | None = None,
             overwrite: bool = False) -> RunResult:  # fmt: skip
    """Run (or resume) a pretraining run described by `cfg`; returns the run folder and metrics.

    A non-empty `cfg.out_dir` is continued with `resume`, replaced with `overwrite` (its old contents are
    deleted once data and model are ready, not before), and refused otherwise.
    """
    dist = init_distributed(cfg.device)
    try:
        return _pretrain(cfg, resume, on_step, dist, overwrite)
    finally:
        shutdown(dist)


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


def _pretrain(cfg: PretrainConfig, resume: bool, on_step, dist, overwrite: bool = False) -> RunResult:
    run_dir = Path(cfg.out_dir)
    main = dist.is_main
    inputs = {"--data": cfg.data, "--tokenizer": cfg.tokenizer}
    replacing = claim_run_dir(run_dir, resume, overwrite, inputs, cfg) if main else False
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

    device = dist.device
    torch.manual_seed(cfg.seed)
    model = Transformer(model_config).to(device)
    if cfg.init == "pytorch":
        # The book builds its GPTModel with PyTorch's default initialisation (embeddings N(0, 1), Linear
        # Kaiming-uniform); on a tiny corpus that memorises much faster than GPT-2's N(0, 0.02).
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.reset_parameters()
    amp = autocast_dtype(cfg, device)
    stats = model_stats(model_config, seq_len)
    task = PretrainTask(cfg, prepared, tokenizer, seq_len, amp, stats.train_flops_per_token)
    if main:
        open_run_dir(run_dir, replacing, cfg, tokenizer)
        global_rows = cfg.batch_size * cfg.grad_accum * dist.world_size
        print(
            f"model {model_config.name}: {stats.params / 1e6:.2f} M parameters, context {model_config.context_length}; "
            f"data {prepared.meta.n_train:,} train / {prepared.meta.n_val:,} val tokens; "
            f"{global_rows} x {seq_len} tokens per step; {dist.world_size} process(es) on {device}, "
            f"{'autocast ' + str(amp).replace('torch.', '') if amp else 'fp32'}"
        )
        if not task.has_val:
            print(f"note: no validation split ({len(prepared.val):,} validation tokens, fewer than seq_len + 1 = "
                  f"{seq_len + 1}; val_fraction {cfg.val_fraction}): validation loss is not measured")  # fmt: skip
    return fit(model, task, cfg, run_dir, dist, resume, on_step)
