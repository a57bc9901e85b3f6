"""`--checkpoint` resolution: one function that turns what the user typed into a model and a tokenizer.

Accepted, in the order they are tried:
1. a hub name (`gpt2`, `llama3.2-1b`, `owner/name`), downloaded once into the cache, then as below;
2. a scratchllm model or run folder (`model_config.json` + `model.safetensors`, tokenizer beside them);
3. a HuggingFace folder (`config.json` + `model.safetensors`, sharded safetensors with an index, or
   `pytorch_model.bin` read with `weights_only=True`) of a GPT-2 or Llama model;
4. Meta's original Llama layout (`params.json` + `consolidated.*.pth` + `tokenizer.model`);
5. a preset name or a model config file: a randomly initialised model (for benchmarks and smoke tests).
The dtype is chosen by `hardware.resolve_dtype`: "auto" follows the dtype the weights are stored in (fp32 stays
fp32; 16-bit weights run in 16 bits where the hardware computes them natively); random weights get bf16 where
it is native.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from scratchllm.checkpoints.io import CONFIG_FILE, load_model_folder, load_tensors
from scratchllm.errors import ScratchLLMError
from scratchllm.hardware import check_device, default_device, resolve_dtype
from scratchllm.models.classifier import CLASSIFIER_FILE


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object | None
    source: str  # "scratchllm", "huggingface" or "random"
    prompt_style: str | None = None  # the style a run was fine-tuned with (prompt_style.json)


def saved_style(folder: Path) -> str | None:
    from scratchllm.files import read_json
    from scratchllm.prompts import STYLE_FILE, get_style

    path = folder / STYLE_FILE
    if not path.exists():
        return None
    data = read_json(path)
    name = data.get("style") if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise ScratchLLMError(f"{path}: expected {{\"style\": NAME}}")
    return get_style(name).name


def hf_style(folder: Path) -> str | None:
    """The style whose chat template a HuggingFace folder's tokenizer_config.json carries word for word (what
    `convert --to hf` writes), so a fine-tuned run keeps its style through HF and back; None for others."""
    from scratchllm.files import read_json
    from scratchllm.prompts import STYLES

    path = folder / "tokenizer_config.json"
    template = read_json(path).get("chat_template") if path.exists() else None
    return next((name for name, style in STYLES.items() if style.chat_template == template), None)


def _tokenizer_in(folder: Path):
    from scratchllm.tokenizers.formats import load_tokenizer

    try:
        return load_tokenizer(folder)
    except ScratchLLMError:
        return None


def load_hf_folder(folder: Path, dtype: torch.dtype | None, device: str):
    """A HuggingFace GPT-2/Llama folder -> our model, streaming tensors from safetensors files."""
    from scratchllm.checkpoints.hf import config_from_hf, state_dict_from_hf
    from scratchllm.checkpoints.io import model_from_tensors
    from scratchllm.files import read_json

    try:
        config = config_from_hf(read_json(folder / "config.json"), name=folder.name)
    except ScratchLLMError as e:
        raise ScratchLLMError(f"{folder}/{e}" if str(e).startswith("config.json") else str(e)) from None
    tensors: dict[str, torch.Tensor] = {}
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    elif index.exists():
        try:
            files = [folder / s for s in sorted(set(read_json(index)["weight_map"].values()))]
        except (KeyError, AttributeError) as e:
            raise ScratchLLMError(f"{index}: malformed safetensors index ({e})") from None
    else:
        files = []
    if files:
        announce_memory(files, dtype)
        for file in files:
            tensors.update(load_tensors(file, dtype))
    elif (folder / "pytorch_model.bin").exists():
        try:
            tensors = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # unpickling errors have many types; all mean "unsafe or broken file"
            raise ScratchLLMError(f"{folder / 'pytorch_model.bin'}: cannot load safely ({e})") from None
    else:
        raise ScratchLLMError(f"{folder}: no model.safetensors, safetensors index or pytorch_model.bin")
    return model_from_tensors(config, state_dict_from_hf(tensors, config), str(folder), dtype, device)


def read_folder_config(folder: Path):
    """The `ModelConfig` of a scratchllm, HuggingFace or Meta model folder, without reading any weights."""
    from scratchllm.checkpoints.hf import config_from_hf
    from scratchllm.checkpoints.io import read_model_config
    from scratchllm.checkpoints.meta import config_from_params, is_meta_folder
    from scratchllm.files import read_json

    if (folder / CONFIG_FILE).exists():
        return read_model_config(folder)
    if (folder / "config.json").exists():
        return config_from_hf(read_json(folder / "config.json"), name=folder.name)
    if is_meta_folder(folder):
        tokenizer = _tokenizer_in(folder)
        return config_from_params(read_json(folder / "params.json"), tokenizer.vocab_size if tokenizer else -1,
                                  folder.name)  # fmt: skip
    raise ScratchLLMError(f"{folder}: not a model folder (no {CONFIG_FILE}, config.json or params.json)")


def check_tokenizer_fits(model, tokenizer, where: str) -> None:
    """A tokenizer whose ids reach past the model's embedding does not belong to that model."""
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise ScratchLLMError(
            f"{where}: the tokenizer has {tokenizer.vocab_size:,} ids but the model's vocabulary is "
            f"{model.config.vocab_size:,}; they do not belong together"
        )


def announce_memory(files: list[Path], dtype: torch.dtype | None) -> None:
    """Say how much memory the weights will take before reading them (large models take a while)."""
    import sys

    from scratchllm.checkpoints.io import tensor_bytes

    total = sum(tensor_bytes(f, dtype) for f in files)
    if total > 256 * 2**20:
        name = str(dtype).replace("torch.", "") if dtype else "stored dtype"
        print(f"loading {files[0].parent.name}: {total / 2**30:.2f} GiB of weights in {name}", file=sys.stderr)


def _stored_dtype(folder: Path) -> torch.dtype | None:
    """The dtype a model folder's weights are stored in: safetensors headers, else config.json's torch_dtype
    (a pytorch_model.bin), else bf16 for Meta's consolidated files (their release dtype)."""
    from scratchllm.checkpoints.io import stored_float_dtype
    from scratchllm.files import read_json

    files = sorted(folder.glob("*.safetensors"))
    if files:
        return stored_float_dtype(files[0])
    if (folder / "config.json").exists():
        name = read_json(folder / "config.json").get("torch_dtype") or ""
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name))
    return torch.bfloat16 if list(folder.glob("consolidated.*.pth")) else None


def load_checkpoint(spec: str | Path, dtype: str | None = "auto", device: str | None = None) -> Loaded:
    """Model + tokenizer from a run folder, a HF folder, or a preset/config (random weights)."""
    from scratchllm.checkpoints.download import HUB_NAMES, cached_folder, download_model, resolve_repo
    from scratchllm.checkpoints.meta import is_meta_folder, load_meta_folder
    from scratchllm.models.config import PRESETS

    device = check_device(device or default_device())
    spec = str(spec)
    if spec.startswith(RANDOM):  # `random:NAME`: the preset's architecture, whatever the hub has of that name
        return _random_model(spec.removeprefix(RANDOM), device, resolve_dtype(dtype, device))
    path = Path(spec)
    if not path.exists() and (repo := resolve_repo(spec)) is not None:
        try:
            path = cached_folder(repo) or download_model(spec)  # a hub name: cached after the first time
        except ScratchLLMError as e:
            if spec in HUB_NAMES and spec in PRESETS:  # the two namespaces meet: say how to reach the other
                raise ScratchLLMError(f"{e} (offline, --checkpoint {RANDOM}{spec} builds the {spec} architecture "
                                      "with random weights)") from None  # fmt: skip
            if spec in HUB_NAMES:
                raise
            # `owner/name` is also what a mistyped local path looks like: say both readings.
            message = f"--checkpoint {spec}: no such local folder, and as hub repository {repo!r}: {e}"
            raise ScratchLLMError(message) from None
    torch_dtype = resolve_dtype(dtype, device, _stored_dtype(path) if path.is_dir() else None)
    if path.is_dir():
        if (path / CLASSIFIER_FILE).exists():
            raise ScratchLLMError(f"{path}: a classifier run folder (finetune classify); use `scratchllm classify`")
        if (path / CONFIG_FILE).exists():
            loaded = Loaded(load_model_folder(path, torch_dtype, device), _tokenizer_in(path), "scratchllm",
                            saved_style(path))  # fmt: skip
        elif (path / "config.json").exists():
            loaded = Loaded(load_hf_folder(path, torch_dtype, device), _tokenizer_in(path), "huggingface",
                            hf_style(path))  # fmt: skip
        elif is_meta_folder(path):
            loaded = Loaded(*load_meta_folder(path, torch_dtype, device), "meta")
        else:
            raise ScratchLLMError(f"{path}: not a model folder (no {CONFIG_FILE}, config.json or params.json)")
        check_tokenizer_fits(loaded.model, loaded.tokenizer, str(path))
        return loaded
    if spec in PRESETS or path.is_file():
        return _random_model(spec, device, torch_dtype)
    raise ScratchLLMError(f"--checkpoint {spec}: no such folder, and not a model preset or config file")


RANDOM = "random:"  # `--checkpoint random:gpt2-medium`: the preset, never the hub model of the same name


def _random_model(name: str, device: str, dtype: torch.dtype) -> Loaded:
    from scratchllm.models import Transformer
    from scratchllm.models.config import PRESETS, get_config

    if name not in PRESETS and not Path(name).is_file():
        raise ScratchLLMError(f"--checkpoint {RANDOM}{name}: not a model preset (scratchllm info lists them) or config "
                              "file")  # fmt: skip
    torch.manual_seed(0)
    return Loaded(Transformer(get_config(name)).to(device=device, dtype=dtype).eval(), None, "random")


def load_for_finetuning(spec: str, tokenizer_spec: str | None, seed: int, device: str):
    """(fp32 model, tokenizer) to fine-tune from `--checkpoint`: a preset gets random weights (seeded) and
    GPT-2's tokenizer with its vocabulary; `--tokenizer` overrides the checkpoint's."""
    from scratchllm.tokenizers.formats import load_tokenizer

    loaded = load_checkpoint(spec, "fp32", device)
    tokenizer = load_tokenizer(tokenizer_spec) if tokenizer_spec else loaded.tokenizer
    model = loaded.model
    if loaded.source == "random":
        from scratchllm.models import Transformer, get_config

        tokenizer = tokenizer or load_tokenizer("gpt2")
        torch.manual_seed(seed)
        model = Transformer(get_config(str(spec).removeprefix(RANDOM), vocab_size=tokenizer.vocab_size)).to(device)
    if tokenizer is None:
        raise ScratchLLMError(f"--checkpoint {spec}: no tokenizer with it; pass --tokenizer")
    check_tokenizer_fits(model, tokenizer, tokenizer_spec or spec)
    return model, tokenizer


def load_classifier(folder: str | Path, device: str = "cpu"):
    """(SequenceClassifier, tokenizer, info) from a `finetune classify` run folder."""
    from scratchllm.checkpoints.io import WEIGHTS_FILE, check_state_dict, read_model_config, tied_aliases
    from scratchllm.files import read_json
    from scratchllm.models import Transformer
    from scratchllm.models.classifier import SequenceClassifier
    from scratchllm.tokenizers.formats import load_tokenizer

    folder = Path(folder)
    if not (folder / CLASSIFIER_FILE).exists():
        raise ScratchLLMError(f"{folder}: not a classifier run folder (no {CLASSIFIER_FILE}); see finetune classify")
    info = read_json(folder / CLASSIFIER_FILE)
    model = SequenceClassifier(Transformer(read_model_config(folder)), len(info["labels"]), info["pooling"],
                               info["pad_id"])  # fmt: skip
    tensors = load_tensors(folder / WEIGHTS_FILE)
    check_state_dict(model, tensors, str(folder / WEIGHTS_FILE))
    for alias, name in tied_aliases(model).items():
        tensors.setdefault(alias, tensors[name])
    model.load_state_dict(tensors)
    return model.to(device).eval(), load_tokenizer(folder), info
