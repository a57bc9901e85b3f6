"""Every field of a config dataclass as a command-line flag (`lr` -> `--lr`, `out_dir` -> `--out-dir`); helpers
shared by the training verbs.

Flags default to None, meaning "not given", so a config file's value stays unless a flag overrides it;
the dataclass itself checks types and ranges (`errors.check_fields`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing

ACTIONS = ("config", "resume", "overwrite", "handler", "verb", "debug", "action")  # arguments that are not fields


def add_config_flags(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    defaults = cls()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        flag = "--" + f.name.replace("_", "-")
        default = f"(default {getattr(defaults, f.name)})"
        if base is bool:
            p.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=default)
        else:
            p.add_argument(flag, dest=f.name, type=base if base in (int, float) else str, default=None, help=default)


def config_overrides(args: argparse.Namespace) -> dict:
    """The field flags of a parsed command line (model overrides and actions left out)."""
    return {k: v for k, v in vars(args).items() if k not in ACTIONS and "__" not in k}


def is_main_process() -> bool:
    """False on the other ranks of a torchrun launch, which train but do not report."""
    return int(os.environ.get("RANK", "0")) == 0


def config_file_for(args: argparse.Namespace, cls: type):
    """--config, or on --resume the run's own resolved config.yaml (flags given now still override it)."""
    from pathlib import Path

    from scratchllm.errors import ScratchLLMError

    if args.resume and args.overwrite:
        raise ScratchLLMError("--resume continues a run and --overwrite replaces it: give one of them")
    if args.config is None and args.resume:
        saved = Path(args.out_dir or cls.out_dir) / "config.yaml"
        return saved if saved.exists() else None
    return args.config
