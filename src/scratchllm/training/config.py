"""Training configuration: flat dataclasses, loadable from YAML, every field overridable by a flag.

`TrainSettings` holds what the shared loop (`training/loop.py`) needs for any task: optimisation,
monitoring and the run folder. Each task's config extends it with its own fields: `PretrainConfig` adds the
model, the corpus and sampling; `ClassifyConfig` the starting checkpoint, the labelled data and its split,
the trainable part and the pooling. A YAML file holds the same keys (see configs/*.yaml); `model` is a preset
name or a config file, and `model_overrides` changes single model fields (`--model-n-layers 4` on the
command line). The resolved config (after file and flags) is saved in the run folder as `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from scratchllm.errors import ScratchLLMError, check_fields
from scratchllm.files import atomic_write


@dataclass
class TrainSettings:
    # optimisation
    max_steps: int = 400
    batch_size: int = 8  # rows per micro-batch and per process
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dtype: str = "auto"  # autocast dtype: auto (bf16 where native), bf16, fp32
    device: str = "auto"  # auto (each process's GPU when there is one, else the CPU), cpu, cuda, cuda:N
    compile: bool = False
    strategy: str = "ddp"  # under torchrun: ddp (a full copy per process) or fsdp (weights and state sharded)
    seed: int = 1337
    # monitoring and output
    out_dir: str = "runs/train"
    eval_every: int = 50
    eval_batches: int = 10
    log_every: int = 10
    save_every: int = 200
    keep_last: int = 2
    progress: bool = True

    what: ClassVar[str] = "training config"  # names the config in error messages
    # Fields a resumed run must keep: they shape the model, its trainable part or its data (the rest, such as
    # lr or max_steps, may change on --resume).
    fixed_on_resume: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        check_fields(self, self.what)
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "log_every", "save_every",
                     "keep_last"):  # fmt: skip
            self._at_least(name, 1)
        if self.dtype not in ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"):
            raise ScratchLLMError(f"config field 'dtype' must be auto, fp32 or bf16, got {self.dtype!r}")
        if not 0 < self.lr <= 10:
            raise ScratchLLMError(f"config field 'lr' must be in (0, 10], got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ScratchLLMError(f"config fields: need 0 <= min_lr <= lr, got {self.min_lr} and {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ScratchLLMError(f"config field {name!r} must be in [0, 1), got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "warmup_steps"):
            self._at_least(name, 0)
        self._one_of("strategy", ("ddp", "fsdp"))
        if self.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ScratchLLMError(f"config field 'device' must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        atomic_write(path, lambda tmp: tmp.write_text(text))

    def _at_least(self, name: str, low: int) -> None:
        if getattr(self, name) < low:
            raise ScratchLLMError(f"config field {name!r} must be >= {low}, got {getattr(self, name)}")

    def _one_of(self, name: str, allowed: tuple[str, ...]) -> None:
        if getattr(self, name) not in allowed:
            raise ScratchLLMError(f"config field {name!r} must be one of {allowed}, got {getattr(self, name)!r}")


@dataclass
class PretrainConfig(TrainSettings):
    # model
    model: str = "gpt-demo"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init: str = "gpt2"  # "gpt2": N(0, 0.02), residual projections scaled; "pytorch": torch's defaults, as the book
    fused_loss: bool = True
    # data (see data.pipeline.PrepareOptions)
    data: str | None = None  # None = the Python standard library's source
    tokenizer: str = "train"
    vocab_size: int = 8192
    pattern: str = "gpt4"
    data_out: str | None = None
    val_fraction: float = 0.1
    seq_len: int | None = None  # default: the model's context length
    sampling: str = "random"  # "random" windows anywhere, or "epochs": the book's fixed windows, reshuffled per epoch
    # samples printed during training
    out_dir: str = "runs/pretrain"
    sample_every: int = 200
    sample_prompt: str = "def "
    sample_tokens: int = 64

    what: ClassVar[str] = "pretrain config"
    fixed_on_resume: ClassVar[tuple[str, ...]] = ("model", "model_overrides", "data", "tokenizer", "vocab_size",
                                                  "pattern", "seq_len")  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        self._at_least("sample_every", 1)
        self._at_least("vocab_size", 1)
        self._at_least("sample_tokens", 0)
        if self.seq_len is not None and self.seq_len < 2:
            raise ScratchLLMError(f"config field 'seq_len' must be >= 2 (or null for the context), got {self.seq_len}")
        self._one_of("init", ("gpt2", "pytorch"))
        self._one_of("sampling", ("random", "epochs"))
        if not 0 <= self.val_fraction < 1:
            raise ScratchLLMError(f"config field 'val_fraction' must be in [0, 1), got {self.val_fraction}")



@dataclass
class FinetuneSettings(TrainSettings):
    """What every fine-tuning task shares: where it starts, its data, one adapter switch, and the book's
    chapter 6 and 7 recipe (AdamW lr 5e-5 constant, weight decay 0.1, betas (0.9, 0.999), no clipping, batch
    8, fp32), which a task restates only where the book's own recipe for it differs."""

    checkpoint: str = "gpt2"  # what to start from: run folder, HF/Meta folder, hub name, or random:PRESET
    tokenizer: str | None = None  # default: the checkpoint's (GPT-2's for a preset)
    data: str = ""  # a file, or a named dataset (data/registry.py)
    epochs: int | None = 1  # sets max_steps from the training split's size; null to use max_steps
    max_length: int | None = None  # truncate examples (default: the task's, at most the context)
    # LoRA (appendix E): adapters on a frozen model instead of training its weights
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: float = 16.0  # the update is scaled by alpha / rank (PEFT's rule; the printed book's 16 = 256 here)
    lora_dropout: float = 0.0
    lora_targets: str = "all"  # "all" (every Linear incl. the head) or a comma list: qkv,proj,fc1,fc2,...
    # the book's settings (batch 8 and weight decay 0.1 as TrainSettings)
    lr: float = 5e-5
    min_lr: float = 5e-5
    warmup_steps: int = 0
    beta2: float = 0.999
    grad_clip: float = 0.0
    dtype: str = "fp32"
    eval_every: int = 5
    eval_batches: int = 5

    lora_fields: ClassVar[tuple[str, ...]] = ("lora", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets")
    fixed_on_resume: ClassVar[tuple[str, ...]] = ("checkpoint", "tokenizer", "data", *lora_fields)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs is not None:
            self._at_least("epochs", 1)
        if self.max_length is not None:
            self._at_least("max_length", 2)
        if self.lora:
            self.lora_config()  # checks the LoRA fields now

    def lora_config(self):
        from scratchllm.models.lora import LoRAConfig

        targets = tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())
        return LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, targets)


@dataclass
class ClassifyConfig(FinetuneSettings):
    data: str = "sms-spam"  # a CSV/TSV/JSONL file, or a named dataset
    text_column: str = "text"  # a header name / JSONL key, or a 0-based column number for headerless files
    label_column: str = "label"
    balance: bool = True  # undersample every class to the smallest
    train_fraction: float = 0.7
    val_fraction: float = 0.1  # the rest is the test split
    split_seed: int = 123
    trainable: str = "last-block"  # without LoRA: head, last-block (+ final norm), last-two-blocks, all
    pooling: str = "last"  # last, last-non-pad, first, mean
    epochs: int | None = 5
    max_length: int | None = None  # default: the longest training text, at most the context
    eval_every: int = 50
    out_dir: str = "runs/classify"

    what: ClassVar[str] = "classification config"
    fixed_on_resume: ClassVar[tuple[str, ...]] = (*FinetuneSettings.fixed_on_resume, "text_column", "label_column",
                                                  "balance", "train_fraction", "val_fraction", "split_seed",
                                                  "trainable", "pooling", "max_length")  # fmt: skip

    def __post_init__(self) -> None:
        if self.trainable == "lora":  # the one adapter switch is `lora`; older configs and run folders said this
            self.lora, self.trainable = True, "last-block"
        super().__post_init__()
        self._one_of("pooling", ("last", "last-non-pad", "first", "mean"))
        self._one_of("trainable", ("head", "last-block", "last-two-blocks", "all"))
        if self.lora and self.trainable != "last-block":
            raise ScratchLLMError(f"config fields: trainable {self.trainable!r} chooses what a full fine-tune trains; "
                                  "with lora only the adapters train (drop one of the two)")  # fmt: skip


@dataclass
class InstructConfig(FinetuneSettings):
    checkpoint: str = "gpt2-medium"  # the book's GPT-2 medium (355M); any run folder, HF/Meta folder, hub name
    data: str = "book-instructions"  # JSON/JSONL records, or the book's 1,100 records (downloaded once)
    style: str = "alpaca"  # prompt style (scratchllm.prompts): alpaca, phi3, chatml, llama3, plain
    mask_prompt: bool = False  # also ignore the prompt's tokens in the loss (the book: off)
    epochs: int | None = 2
    samples: int = 1  # validation responses printed at each evaluation
    response_tokens: int = 256  # at most this many tokens per generated response
    dtype: str = "auto"  # bf16 autocast where the CPU or GPU has it natively (the book: fp32, --dtype fp32)
    out_dir: str = "runs/instruct"

    what: ClassVar[str] = "instruction fine-tuning config"
    fixed_on_resume: ClassVar[tuple[str, ...]] = (*FinetuneSettings.fixed_on_resume, "style")

    def __post_init__(self) -> None:
        super().__post_init__()
        from scratchllm.prompts import get_style

        get_style(self.style)
        for name in ("samples", "response_tokens"):
            self._at_least(name, 0)


@dataclass
class DPOConfig(FinetuneSettings):
    checkpoint: str = "runs/instruct-book"  # the instruction-tuned model to start from (and the reference)
    data: str = "book-preferences"  # JSON/JSONL with instruction/input plus chosen/rejected, or the book's file
    style: str | None = None  # default: the style the checkpoint was fine-tuned with (else alpaca)
    beta: float = 0.1
    logp: str = "mean"  # mean: the book (rewards unscaled); sum: TRL / torchtune (rewards scaled by beta)
    # Which tokens count as the response: "response" (the response alone), or "book" (the book's collate, which
    # also counts the alpaca prompt's `### Response:\n` marker tokens)
    response_mask: str = "response"
    # the book's DPO settings
    lr: float = 5e-6
    min_lr: float = 5e-6
    weight_decay: float = 0.01
    out_dir: str = "runs/dpo"

    what: ClassVar[str] = "DPO config"
    fixed_on_resume: ClassVar[tuple[str, ...]] = (*FinetuneSettings.fixed_on_resume, "style", "response_mask")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.style is not None:
            from scratchllm.prompts import get_style

            get_style(self.style)
        if not self.beta > 0:
            raise ScratchLLMError(f"config field 'beta' must be > 0, got {self.beta}")
        self._one_of("logp", ("mean", "sum"))
        self._one_of("response_mask", ("response", "book"))


def load_config_file(path: str | Path, cls: type = None) -> dict[str, Any]:
    """The fields of a YAML config file, checked against the fields of `cls` (default PretrainConfig)."""
    import yaml

    known = [f.name for f in dataclasses.fields(cls or PretrainConfig)]
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ScratchLLMError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ScratchLLMError(f"{path}: malformed YAML ({e})") from None
    if not isinstance(data, dict):
        raise ScratchLLMError(f"{path}: expected a mapping of config fields")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ScratchLLMError(f"{path}: unknown field {unknown[0]!r} (known: {', '.join(known)})")
    return data


# With a GPU and no config file, the default run is bigger and longer (fields the user did not set).
GPU_DEFAULTS = {"batch_size": 32, "max_steps": 2000, "compile": True, "eval_every": 200, "sample_every": 500,
                "save_every": 500,
                "model_overrides": {"emb_dim": 512, "n_layers": 8, "n_heads": 8, "context_length": 512}}  # fmt: skip


def build_config(file: str | Path | None = None, cls: type | None = None, **overrides: Any) -> TrainSettings:
    """A `cls` config (default PretrainConfig): file values, then non-None `overrides` (flags) on top."""
    cls = cls or PretrainConfig
    values: dict[str, Any] = load_config_file(file, cls) if file else {}
    if cls is PretrainConfig and file is None and _cuda_available() and overrides.get("device") in (None, "auto"):
        for key, value in GPU_DEFAULTS.items():
            if key == "model_overrides":
                values[key] = dict(value)  # the user's --model-* flags are applied on top below
            elif overrides.get(key) is None:
                values[key] = value
    model_overrides = overrides.pop("model_overrides", None)
    if "epochs" in {f.name for f in dataclasses.fields(cls)} and overrides.get("max_steps") is not None:
        # Fine-tuning counts epochs by default; a step count asked for on the command line replaces that (it
        # used to be overridden silently by the default epochs, with no flag to unset them).
        if overrides.get("epochs") is not None:
            raise ScratchLLMError("give --epochs or --max-steps, not both: epochs set the number of steps")
        values["epochs"] = None
    values.update({k: v for k, v in overrides.items() if v is not None})
    if model_overrides is not None:
        values["model_overrides"] = {**(values.get("model_overrides") or {}), **model_overrides}
    try:
        config = cls(**values)
        if isinstance(config, PretrainConfig):
            from scratchllm.models.config import get_config

            get_config(config.model, **config.model_overrides)  # a bad model fails now, not after the data
        return config
    except TypeError as e:
        raise ScratchLLMError(f"{cls.what}: {e}") from None
    except ScratchLLMError as e:
        # Name the file when the bad value came from it rather than from a flag.
        field = re.search(r"field '(\w+)'", str(e))
        from_file = file and field and field.group(1) in values and overrides.get(field.group(1)) is None
        raise ScratchLLMError(f"{file}: {e}" if from_file else str(e)) from None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
