"""`scratchllm convert --to gguf`: a model as one GGUF file, the format llama.cpp, Ollama and LM Studio run.

Written with the `gguf` package (llama.cpp's own writer and quantisers), never by hand. What differs per
family (llama.cpp's architecture name, its hyper-parameter keys, its tensor names and layouts) comes from the
family file (`gguf_arch`, `gguf_hparams`, `gguf_tensors`); the vocabulary from `tokenizers/gguf_vocab.py`;
the chat template from the run's prompt style, so llama.cpp formats a conversation as the model was tuned.

Tensor types follow llama.cpp's converter: 1-D tensors (norms, biases, RoPE factors) stay f32, matrices take
the requested type, and a matrix whose rows do not split into whole quantisation blocks (32 values for q8_0
and q4_0) is written f16 instead.
"""

from __future__ import annotations

from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.files import atomic_write

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ScratchLLMError("convert --to gguf needs the gguf package (llama.cpp's file library): "
                              "pip install gguf") from None  # fmt: skip
    return gguf


def gguf_tensors(model) -> dict:
    """llama.cpp's tensors of `model` (float32, our (out, in) layout) under its names."""
    from scratchllm.models.lora import merged_state_dict

    sd = merged_state_dict(model)  # a LoRA model: adapters folded in
    return model.config.family.gguf_tensors({k: v.detach() for k, v in sd.items()}, model.config)


def to_gguf(model, tokenizer, out_path: str | Path, qtype: str = "f16", prompt_style=None,
            stop_ids: tuple[int, ...] = (), name: str | None = None, source: str | None = None) -> Path:  # fmt: skip
    """Write `model` with `tokenizer` (and the `prompt_style` it chats in) to `out_path`, atomically.

    Everything is built and checked before the file is opened, so a model llama.cpp cannot hold leaves
    nothing behind.
    """
    from scratchllm import __version__
    from scratchllm.tokenizers.gguf_vocab import gguf_vocab

    gguf = _gguf()
    if qtype not in TYPES:
        raise ScratchLLMError(f"convert --to gguf: --type {qtype!r}: expected one of {', '.join(TYPES)}")
    if tokenizer is None:
        raise ScratchLLMError("convert --to gguf: the checkpoint has no tokenizer, which a GGUF file must carry")
    config = model.config
    family = config.family
    hparams = family.gguf_hparams(config)  # refuses what llama.cpp cannot hold, naming why
    tensors = gguf_tensors(model)
    vocab = gguf_vocab(tokenizer, config.vocab_size, stop_ids)
    arrays = {k: _encode(gguf, v.numpy(), qtype) for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(tmp, family.gguf_arch)
        w.add_name(name or config.name)
        w.add_description(f"exported by scratchllm {__version__}" + (f" from {source}" if source else ""))
        w.add_file_type(_FILE_TYPES[qtype](gguf))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in hparams.items():
            _add_value(w, f"{family.gguf_arch}.{key}", value)
        _add_vocab(w, vocab)
        if prompt_style is not None:
            w.add_chat_template(prompt_style.chat_template)
        for key, (data, raw) in arrays.items():
            w.add_tensor(key, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    return atomic_write(out_path, write)


_FILE_TYPES = {
    "f32": lambda g: g.LlamaFileType.ALL_F32, "f16": lambda g: g.LlamaFileType.MOSTLY_F16,
    "bf16": lambda g: g.LlamaFileType.MOSTLY_BF16, "q8_0": lambda g: g.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": lambda g: g.LlamaFileType.MOSTLY_Q4_0,
}  # fmt: skip


def _encode(gguf, data, qtype: str):
    """(array, raw GGML type or None) for one tensor."""
    import numpy as np

    kind = gguf.GGMLQuantizationType
    if data.ndim == 1 or qtype == "f32":
        return data.astype(np.float32), None
    if qtype == "f16":
        return data.astype(np.float16), None
    target = {"bf16": kind.BF16, "q8_0": kind.Q8_0, "q4_0": kind.Q4_0}[qtype]
    block = gguf.GGML_QUANT_SIZES[target][0]
    if data.shape[-1] % block:
        return data.astype(np.float16), None
    return gguf.quants.quantize(data.astype(np.float32), target), target


def _add_value(w, key: str, value) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    else:
        raise ScratchLLMError(f"convert --to gguf: key {key!r} has a value of type {type(value).__name__}")


def _add_vocab(w, vocab) -> None:
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    if vocab.scores:
        w.add_token_scores(vocab.scores)
    adders = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "eot": w.add_eot_token_id,
              "unk": w.add_unk_token_id, "pad": w.add_pad_token_id}  # fmt: skip
    for kind, token_id in vocab.special_ids.items():
        adders[kind](token_id)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)


def modelfile_text(gguf_file: str, prompt_style=None, stop_texts: tuple[str, ...] = ()) -> str:
    """An Ollama Modelfile for `gguf_file` (a path relative to the Modelfile): the style's Go template and
    its stop strings, so `ollama create NAME -f FILE` is the only step left."""
    lines = ["# Written by scratchllm convert --to gguf; run: ollama create NAME -f THIS_FILE", f"FROM ./{gguf_file}"]
    if prompt_style is not None:
        lines.append(f"TEMPLATE {_modelfile_value(prompt_style.ollama_template, always=True)}")
    stops = list(dict.fromkeys([*(prompt_style.stop_strings if prompt_style else ()), *stop_texts]))
    lines += [f"PARAMETER stop {_modelfile_value(s)}" for s in stops if s]
    return "\n".join(lines) + "\n"


def _modelfile_value(text: str, always: bool = False) -> str:
    """A Modelfile argument as Ollama's parser reads it back: bare, or quoted when it holds a newline or
    starts or ends with a space; triple quotes when it holds a quote (the parser knows no escapes)."""
    if '"""' in text or "\t" in text:  # the parser would end the value early / drop the tab
        raise ScratchLLMError(f"Ollama Modelfile: cannot write the value {text!r}")
    if not (always or "\n" in text or text != text.strip(" ")):
        return text
    return f'"""{text}"""' if '"' in text else f'"{text}"'
