"""`scratchllm convert`: our model folders <-> HuggingFace folders.

`to_hf` writes what `transformers.AutoModelForCausalLM.from_pretrained` and `AutoTokenizer` read:
config.json, model.safetensors (HF names, untied copies contiguous), tokenizer.json (byte-level BPE) or
tokenizer.model (SentencePiece, read by the family's HF tokenizer class) with its tokenizer_config.json, and a
generation_config.json. `to_scratchllm` goes the other way for any folder `--checkpoint` understands.
"""

from __future__ import annotations

import json
from pathlib import Path

from scratchllm.checkpoints.hf import config_to_hf, state_dict_to_hf
from scratchllm.checkpoints.io import atomic_write, save_model, save_tensors
from scratchllm.errors import ScratchLLMError


def to_hf(model, tokenizer, out_dir: str | Path, prompt_style=None) -> Path:
    """Write a HuggingFace folder; a `prompt_style` becomes the tokenizer's `chat_template`."""
    from scratchllm.tokenizers.bpe import BPETokenizer
    from scratchllm.tokenizers.formats import to_hf_tokenizer_json
    from scratchllm.tokenizers.sentencepiece import SentencePieceTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    hf_config = config_to_hf(config)
    eot = tokenizer.eot_id if tokenizer is not None else None
    if eot is not None:
        hf_config.update(bos_token_id=eot, eos_token_id=eot)
    hf_config["torch_dtype"] = str(model.dtype).replace("torch.", "")
    _write_json(out / "config.json", hf_config)
    tensors = state_dict_to_hf({k: v.detach() for k, v in model.state_dict().items()}, config)
    save_tensors(tensors, out / "model.safetensors", metadata={"format": "pt"})
    _write_json(out / "generation_config.json", {"bos_token_id": eot, "eos_token_id": eot})
    if tokenizer is not None:
        eot_text = next((s for s, i in tokenizer.special_tokens.items() if i == eot), None)
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config.context_length,
            "bos_token": eot_text, "eos_token": eot_text, "clean_up_tokenization_spaces": False,
        }  # fmt: skip
        if isinstance(tokenizer, BPETokenizer):
            _write_json(out / "tokenizer.json", to_hf_tokenizer_json(tokenizer))
        elif isinstance(tokenizer, SentencePieceTokenizer):  # the model file itself; transformers converts it
            tokenizer.save(out / "tokenizer.model")
            bos = tokenizer.sp.IdToPiece(tokenizer.sp.bos_id()) if tokenizer.sp.bos_id() >= 0 else None
            tokenizer_config.update(tokenizer_class=config.family.hf_sentencepiece_class, bos_token=bos)
        else:
            raise ScratchLLMError(f"convert --to hf: a {type(tokenizer).__name__} cannot be exported")
        if prompt_style is not None:
            tokenizer_config["chat_template"] = prompt_style.chat_template
        _write_json(out / "tokenizer_config.json", tokenizer_config)
    return out


def to_scratchllm(model, tokenizer, out_dir: str | Path, prompt_style: str | None = None) -> Path:
    from scratchllm.prompts import STYLE_FILE
    from scratchllm.tokenizers.formats import save_tokenizer

    out = save_model(model, out_dir)
    if prompt_style is not None:
        _write_json(out / STYLE_FILE, {"style": prompt_style})
    if tokenizer is not None:
        save_tokenizer(tokenizer, out)
    return out


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
