"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a folder `checkpoints/step-000200/` in the run folder holding
    model_config.json, model.safetensors     the weights (loadable on their own)
    optimizer.safetensors                    AdamW moments and step counters, flattened to named tensors
    rng.safetensors                          torch's global RNG and the data sampler's RNG
    state.json                               step, tokens seen, optimizer hyper-parameters, run config
Under `--strategy fsdp` the weights and optimizer files are replaced by `shards/`: one safetensors file per
process with its shard, read back by a run with the same process count. It is written as
`step-000200.tmp/` and renamed when complete, so a crash mid-write leaves the previous
checkpoint as the latest; only the last `keep_last` are kept. Nothing here uses pickle. A checkpoint that
cannot be read back (a truncated file, a disk that lost blocks) is moved aside as `step-N.damaged/` for
inspection and resuming falls back to the newest complete one before it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from scratchllm.checkpoints.io import (
    WEIGHTS_FILE,
    check_state_dict,
    load_tensors,
    read_model_config,
    save_model,
    save_tensors,
    tied_aliases,
)
from scratchllm.errors import ScratchLLMError

CHECKPOINTS = "checkpoints"
SHARDS = "shards"  # a sharded (FSDP) checkpoint's weights and optimizer state, one file per process
_PREFIX = "step-"


class DamagedCheckpoint(ScratchLLMError):
    """A checkpoint folder whose files cannot be read back (as opposed to one that belongs to another model)."""


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    tokens_seen: int = 0


def local_part(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor (a DTensor's shard under FSDP; a plain tensor is all of itself)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state as named tensors (this process's shard of each, under FSDP) + the param groups."""
    sd = opt.state_dict()
    tensors = {}
    for idx, slots in sd["state"].items():
        for name, value in slots.items():
            tensors[f"state.{idx}.{name}"] = local_part(value) if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def checkpoint_tmp(run_dir: Path, step: int, create: bool = True) -> Path:
    """The `checkpoints/step-N.tmp/` folder, made fresh (rank 0 makes it; under FSDP every rank writes into it)."""
    tmp = Path(run_dir) / CHECKPOINTS / f"{_PREFIX}{step:06d}.tmp"
    if create:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    return tmp


def finish_checkpoint(tmp: Path, sampler_rng: torch.Generator, state: TrainState, config: dict, keep_last: int,
                      optimizer_meta: dict | None = None) -> Path:  # fmt: skip
    """Add RNGs and state.json to a filled `tmp` folder, rename it into place, prune old ones; returns it."""
    save_tensors({"torch": torch.get_rng_state(), "sampler": sampler_rng.get_state()}, tmp / "rng.safetensors")
    info = {"step": state.step, "tokens_seen": state.tokens_seen, "optimizer": optimizer_meta or {}, "config": config}
    (tmp / "state.json").write_text(json.dumps(info, indent=1))
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(tmp.parent.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(run_dir: Path, model, optimizer, sampler_rng: torch.Generator, state: TrainState,
                    config: dict, keep_last: int) -> Path:  # fmt: skip
    """Write checkpoints/step-N atomically (folder rename) and prune old ones; returns the folder."""
    from scratchllm.models.lora import checkpoint_tensors

    tmp = checkpoint_tmp(run_dir, state.step)
    save_model(model, tmp, checkpoint_tensors(model))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    save_tensors(opt_tensors, tmp / "optimizer.safetensors")
    return finish_checkpoint(tmp, sampler_rng, state, config, keep_last, opt_meta)


def _shard_file(folder: Path, rank: int, world: int) -> Path:
    return folder / f"rank-{rank:03d}-of-{world:03d}.safetensors"


def save_shards(model, optimizer, folder: Path, rank: int, world: int) -> dict:
    """This process's shard of the weights and AdamW state as one safetensors file (no pickle, unlike
    torch.distributed.checkpoint's metadata); returns the optimizer's param groups for state.json."""
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors({**{f"model.{n}": local_part(t) for n, t in model.state_dict().items()}, **opt_tensors},
                 _shard_file(folder, rank, world))  # fmt: skip
    return opt_meta


def load_shards(model, optimizer, folder: Path, opt_meta: dict, rank: int, world: int) -> None:
    """Read this process's shard back into a model sharded the same way (same process count)."""
    from torch.distributed.tensor import DTensor

    path = _shard_file(folder, rank, world)
    if not path.exists():
        import re

        found = (re.search(r"-of-(\d+)\.", p.name) for p in folder.glob("rank-*.safetensors"))
        written = {int(m.group(1)) for m in found if m}
        if written and world not in written:
            raise ScratchLLMError(f"{folder}: written by {max(written)} processes with --strategy fsdp; resume with "
                                  f"as many (this run has {world})")  # fmt: skip
        raise DamagedCheckpoint(f"{path}: missing")
    try:
        tensors = load_tensors(path)
    except ScratchLLMError as e:
        raise DamagedCheckpoint(str(e)) from None
    with torch.no_grad():
        for name, t in model.state_dict().items():
            saved = tensors.get(f"model.{name}")
            if saved is None or saved.shape != local_part(t).shape:
                raise DamagedCheckpoint(f"{path}: shard of {name!r} missing or of another shape")
            local_part(t).copy_(saved)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    opt_state = _unflatten_optimizer({k: v for k, v in tensors.items() if k.startswith("state.")}, opt_meta)
    for idx, slots in opt_state["state"].items():
        p = params[idx]
        for slot, value in slots.items():
            if isinstance(p, DTensor) and value.dim() > 0:  # moments are sharded like their parameter
                slots[slot] = DTensor.from_local(value, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
    optimizer.load_state_dict(opt_state)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (unfinished `.tmp` and set-aside `.damaged` ones are not)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[5:].isdigit())


def _read_checkpoint(folder: Path) -> tuple:
    """Every file of a checkpoint, parsed and checked for damage before anything is applied.

    A sharded checkpoint's weights stay in its shard files (None here); `load_shards` reads them."""
    try:
        saved = read_model_config(folder)
        tensors = None if (folder / SHARDS).is_dir() else load_tensors(folder / WEIGHTS_FILE)
        info = json.loads((folder / "state.json").read_text())
        step, tokens_seen, opt_meta = int(info["step"]), int(info["tokens_seen"]), info["optimizer"]
        opt_tensors = None if tensors is None else load_tensors(folder / "optimizer.safetensors")
        rng = load_tensors(folder / "rng.safetensors")
        rng_states = rng["torch"], rng["sampler"]
    except DamagedCheckpoint:
        raise
    except ScratchLLMError as e:
        raise DamagedCheckpoint(str(e)) from None
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise DamagedCheckpoint(f"{folder}: unreadable ({type(e).__name__}: {e})") from None
    bad = next((n for n, t in (tensors or {}).items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise DamagedCheckpoint(f"{folder / WEIGHTS_FILE}: tensor {bad!r} holds NaN or infinity")
    return saved, tensors, step, tokens_seen, opt_meta, opt_tensors, rng_states


def load_checkpoint_into(folder: Path, model, optimizer, sampler_rng: torch.Generator, apply=None) -> TrainState:
    """Restore weights, optimizer, RNGs and counters from `folder`, after checking it matches the model.

    `apply(tensors, optimizer_state)`, when given, puts the full weights and optimizer state into a model
    whose parameters are sharded (FSDP); by default they are copied in directly.
    """
    saved, tensors, step, tokens_seen, opt_meta, opt_tensors, (torch_rng, sampler_state) = _read_checkpoint(folder)
    if saved.to_dict() != model.config.to_dict():
        diff = next(k for k, v in saved.to_dict().items() if model.config.to_dict().get(k) != v)
        raise ScratchLLMError(
            f"{folder}: checkpoint has {diff}={getattr(saved, diff)!r} but the run's model has "
            f"{diff}={getattr(model.config, diff)!r}; use the run's own config or a new --out-dir"
        )
    if tensors is None:
        import torch.distributed as dist

        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        try:
            load_shards(model, optimizer, folder / SHARDS, opt_meta, rank, world)
        except (ValueError, KeyError, RuntimeError) as e:
            raise DamagedCheckpoint(f"{folder / SHARDS}: unreadable ({type(e).__name__}: {e})") from None
        torch.set_rng_state(torch_rng)
        sampler_rng.set_state(sampler_state)
        return TrainState(step=step, tokens_seen=tokens_seen)
    from scratchllm.models.lora import checkpoint_tensors, has_lora

    adapters_only = has_lora(model)
    if adapters_only:  # the frozen base comes from --checkpoint; the checkpoint holds the adapters
        expected = set(checkpoint_tensors(model))
        if set(tensors) != expected:
            odd = sorted(set(tensors) ^ expected)[0]
            raise ScratchLLMError(f"{folder / WEIGHTS_FILE}: not this run's LoRA adapters ({odd!r} differs)")
    else:
        check_state_dict(model, tensors, str(folder / WEIGHTS_FILE))
        for alias, name in tied_aliases(model).items():
            tensors.setdefault(alias, tensors[name])
    try:
        if apply is not None:
            apply(tensors, _unflatten_optimizer(opt_tensors, opt_meta))
        else:
            optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, opt_meta))
    except (KeyError, ValueError, TypeError) as e:
        raise ScratchLLMError(f"{folder}: optimizer state does not match this model ({e})") from None
    if apply is None:
        with torch.no_grad():
            current = model.state_dict()
            for name in tensors if adapters_only else current:
                current[name].copy_(tensors[name])
    torch.set_rng_state(torch_rng)
    sampler_rng.set_state(sampler_state)
    return TrainState(step=step, tokens_seen=tokens_seen)


def resume_latest(run_dir: Path, model, optimizer, sampler_rng: torch.Generator, say=print,
                  apply=None) -> tuple[TrainState, Path]:  # fmt: skip
    """Load the newest complete checkpoint; damaged newer ones are moved aside (`.damaged`) and reported."""
    for folder in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint_into(folder, model, optimizer, sampler_rng, apply), folder
        except DamagedCheckpoint as e:
            aside = folder.with_name(folder.name + ".damaged")
            with contextlib.suppress(FileNotFoundError):  # under torchrun another process may have moved it
                shutil.rmtree(aside, ignore_errors=True)
                folder.rename(aside)
            say(f"warning: {e}\n  -> moved to {aside} for inspection; trying the checkpoint before it")
    raise ScratchLLMError(f"--resume: no complete checkpoint left under {Path(run_dir) / CHECKPOINTS}")
