"""Data-parallel training with PyTorch's own engine (book appendix A.4).

`torchrun --nproc_per_node N -m scratchllm pretrain ...` starts N copies of the same command; each reads
RANK/WORLD_SIZE/LOCAL_RANK from its environment. We initialise the process group (gloo on CPU, NCCL on
GPU), wrap the model in DistributedDataParallel (gradients averaged across processes during backward),
and let only rank 0 write logs and checkpoints. Without those variables everything is single-process.

`--strategy fsdp` shards instead (PyTorch's FSDP2, `fully_shard` on every transformer block and on the
whole model): each process holds 1/N of the weights, gradients and AdamW state, for models that do not fit
one device. Each process writes its own shard of a checkpoint (`training/state.py`); the run folder's full
`model.safetensors` is gathered on rank 0 at the end. A sharded run also resumes from a full checkpoint
(a run started without sharding). Every process evaluates, because a sharded forward needs them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """This process's place in a torchrun launch (or a single process) and the device it trains on.

    `device`: auto (the process's own GPU when there is one, else the CPU), cpu, cuda (the process's own GPU)
    or cuda:N (single process only: under torchrun each process takes the GPU of its LOCAL_RANK).
    """
    from scratchllm.errors import ScratchLLMError
    from scratchllm.hardware import check_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    if device == "cuda":
        device = f"cuda:{local}"
    elif device.startswith("cuda:") and world > 1:
        raise ScratchLLMError(f"--device {device}: under torchrun each process uses its own GPU; pass --device cuda")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(int(os.environ.get("RANK", "0")), world, local, device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_across(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


class Sharded:
    """A model sharded with FSDP2, and the conversions between its sharded and the full state."""

    def __init__(self, model: torch.nn.Module, info: DistInfo):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        from scratchllm.models.transformer import Transformer, TransformerBlock

        mesh = init_device_mesh(torch.device(info.device).type, (info.world_size,))
        for module in model.modules():
            if isinstance(module, TransformerBlock):
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        if isinstance(model, Transformer):
            register_fsdp_forward_method(model, "hidden")  # the fused loss calls hidden(), not forward()
        self.model = model

    def _names(self, optimizer) -> list[str]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]

    def full_weights(self) -> dict:
        """The whole model's weights, gathered on rank 0 (empty elsewhere); every process must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_full_state(self, optimizer):
        """`apply` for `state.load_checkpoint_into`: full weights and optimizer state into the shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        def apply(weights: dict, opt_state: dict) -> None:
            options = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, weights, options=options)
            names = self._names(optimizer)
            by_name = {"state": {names[int(i)]: v for i, v in opt_state["state"].items()},
                       "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                                        for g in opt_state["param_groups"]]}  # fmt: skip
            set_optimizer_state_dict(self.model, optimizer, by_name, options=options)

        return apply


def all_true(flag: bool, info: DistInfo) -> bool:
    """True when `flag` holds on every process."""
    if not info.enabled:
        return flag
    value = torch.tensor(float(flag), device=info.device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
