"""GGUF export held to llama.cpp itself (llama-cpp-python, built from source by `make`): its greedy tokens, its
logits, its tokenizer and its chat template against ours; `gguf`'s reader on every tensor; the refusals.

The trained models are a small GPT-2 and a small Llama 3 with Llama 3.1 RoPE scaling (acting inside their 64
positions: original context 16), pretrained here for a few hundred steps on the verdict; the later families
are random models whose logits llama.cpp must reproduce.
"""

from __future__ import annotations

import gguf
import llama_cpp
import numpy as np
import pytest
import torch

from scratchllm.checkpoints.load import load_checkpoint
from scratchllm.cli.main import main
from scratchllm.models import Transformer
from scratchllm.models.config import ModelConfig
from scratchllm.models.families import PRESETS
from scratchllm.tokenizers.formats import from_hf_tokenizer_json, load_tokenizer
from scratchllm.training.config import PretrainConfig
from scratchllm.training.trainer import pretrain

from .conftest import VERDICT
from .hf_families import gemma_style_sentencepiece, qwen_style_tokenizer

PROMPTS = ["I had always thought", "\"Mrs. Gisburn,\" he said", "The picture was"]
HARD_TEXT = (
    "def f(x):\n    return {'a': x**2}  # ok?!\n\n\n   spaces\t\ttabs\r\n"
    "emoji 🦙🎉👍🏽 中文字符 日本語のテキスト 한국어 naïve café — “DON'T”\n"
    "1234567 3.14159 $100,000.00\n \n"
)
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_context_length": 16}  # fmt: skip
TWO_TURNS = [
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who painted it?"},
    {"role": "assistant", "content": "Jack Gisburn."}, {"role": "user", "content": "Why did he stop?"},
]  # fmt: skip


def open_llama(path, **kw) -> llama_cpp.Llama:
    return llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, verbose=False, **kw)


def llama_greedy(llm: llama_cpp.Llama, ids: list[int], n: int) -> list[int]:
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(token)
        if len(out) == n:
            return out
    return out


def llama_logits(llm: llama_cpp.Llama, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


@torch.no_grad()
def our_greedy(model, ids: list[int], n: int) -> list[int]:
    """Full recomputation each step, in fp32: the unoptimised reference."""
    x = torch.tensor([ids])
    for _ in range(n):
        x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[0, len(ids) :].tolist()


def export(source, out, qtype="f32", *extra) -> None:
    assert main(["convert", "--to", "gguf", str(source), str(out), "--type", qtype, *extra]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Trained small GPT-2 (GPT-2's pre-tokenizer) and Llama 3 (GPT-4's, RoPE scaling on) run folders."""
    root = tmp_path_factory.mktemp("gguf-runs")
    out = {}
    for name, model, pattern, overrides in (
        ("gpt2", "gpt-tiny", "gpt2", {}), ("llama", "llama-tiny", "gpt4", {"rope_scaling": LLAMA3_SCALING})
    ):
        cfg = PretrainConfig(model=model, model_overrides={"context_length": 64, **overrides}, data=str(VERDICT),
                             vocab_size=400, pattern=pattern, data_out=str(root / f"data-{name}"),
                             out_dir=str(root / name), max_steps=300, batch_size=8, lr=5e-3, min_lr=5e-4,
                             warmup_steps=10, dtype="fp32", eval_every=300, save_every=300, sample_every=300,
                             sample_tokens=8, progress=False)  # fmt: skip
        pretrain(cfg)
        out[name] = root / name
    return out


@torch.no_grad()
def round_matrices(model, dtype: torch.dtype):
    """Our model holding what a 16-bit file holds: its matrices rounded to `dtype`, its 1-D tensors f32."""
    for p in model.parameters():
        if p.dim() > 1:
            p.copy_(p.to(dtype).float())
    return model


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("qtype", ["f32", "f16", "bf16"])
def test_llama_cpp_continues_every_prompt_as_we_do(runs, family, qtype, tmp_path):
    """Greedy, 24 tokens from each prompt: llama.cpp on the file equals our model on the same weights (for a
    16-bit file, our matrices rounded as the file holds them; both compute in fp32)."""
    export(runs[family], tmp_path / "m.gguf", qtype)
    loaded = load_checkpoint(runs[family], "fp32")
    if family == "llama":
        assert loaded.model.config.rope_scaling["rope_type"] == "llama3"
    if qtype != "f32":
        round_matrices(loaded.model, {"f16": torch.float16, "bf16": torch.bfloat16}[qtype])
    llm = open_llama(tmp_path / "m.gguf")
    for prompt in PROMPTS:
        ids = loaded.tokenizer.encode(prompt)
        assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == ids
        assert llama_greedy(llm, ids, 24) == our_greedy(loaded.model, ids, 24), prompt
    llm.close()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("qtype,first,tol", [("q8_0", 4, 0.05), ("q4_0", 1, 0.35)])
def test_quantised_files_stay_close(runs, family, qtype, first, tol, tmp_path):
    """q8_0 agrees on the first tokens and its logits are within 5% of the logits' spread of ours at every
    position (q4_0: the first token, within 35%)."""
    export(runs[family], tmp_path / "m.gguf", qtype)
    loaded = load_checkpoint(runs[family], "fp32")
    llm = open_llama(tmp_path / "m.gguf", logits_all=True)
    for prompt in PROMPTS:
        ids = loaded.tokenizer.encode(prompt)
        with torch.no_grad():
            ours = loaded.model(torch.tensor([ids]))[0].numpy()
        theirs = llama_logits(llm, ids)
        assert np.abs(theirs - ours).max() < tol * ours.std(), prompt
        assert llama_greedy(llm, ids, first) == our_greedy(loaded.model, ids, first), prompt
    llm.close()


def test_the_reader_sees_every_tensor_with_its_shape_and_type(runs, tmp_path):
    export(runs["llama"], tmp_path / "m.gguf", "q8_0")
    config = load_checkpoint(runs["llama"], "fp32").model.config
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: t for t in reader.tensors}
    expected = {"token_embd.weight", "output_norm.weight", "rope_freqs.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(config.n_layers)
        for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                  "ffn_down")
    }  # fmt: skip
    assert set(tensors) == expected  # tied head: llama.cpp reuses token_embd
    kv = config.n_kv_heads * config.head_dim
    assert list(tensors["blk.0.attn_k.weight"].shape) == [config.emb_dim, kv]  # GGUF lists dims innermost first
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [config.hidden_dim, config.emb_dim]
    for name, t in tensors.items():
        assert t.tensor_type == (gguf.GGMLQuantizationType.F32 if len(t.shape) == 1 else
                                 gguf.GGMLQuantizationType.Q8_0), name  # fmt: skip
    field = reader.get_field("llama.rope.freq_base")
    assert field.contents() == pytest.approx(config.rope_base)
    assert reader.get_field("tokenizer.ggml.pre").contents() == "llama-bpe"
    assert reader.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q8_0


@pytest.mark.parametrize("tokenizer_kind", ["gpt2", "trained-gpt4", "qwen", "gemma"])
def test_llama_cpp_tokenizes_hard_text_to_our_ids(tokenizer_kind, runs, tmp_path):
    if tokenizer_kind == "gpt2":
        tokenizer, arch = load_tokenizer("gpt2"), "gpt-tiny"
    elif tokenizer_kind == "trained-gpt4":
        tokenizer, arch = load_checkpoint(runs["llama"], "fp32").tokenizer, "llama-tiny"
    elif tokenizer_kind == "qwen":
        qwen_style_tokenizer([VERDICT.read_text()], 600).save(str(tmp_path / "tokenizer.json"))
        tokenizer, arch = from_hf_tokenizer_json(tmp_path / "tokenizer.json"), "qwen3-tiny"
    else:
        tokenizer = load_tokenizer(gemma_style_sentencepiece(VERDICT.read_text().split("\n\n"), tmp_path / "sp", 600))
        arch = "gemma3-tiny"
    from scratchllm.checkpoints.gguf import to_gguf

    config = ModelConfig(name=arch, **{**PRESETS[arch], "vocab_size": tokenizer.vocab_size, "n_layers": 6,
                                       "global_every": 6} if arch == "gemma3-tiny" else
                         {**PRESETS[arch], "vocab_size": tokenizer.vocab_size})  # fmt: skip
    to_gguf(Transformer(config), tokenizer, tmp_path / "v.gguf", "f16")
    llm = open_llama(tmp_path / "v.gguf", vocab_only=True)
    assert llm.tokenize(HARD_TEXT.encode(), add_bos=False, special=False) == tokenizer.encode(HARD_TEXT)
    if tokenizer.special_tokens:  # special=True: marker text becomes the marker's id, as allowed_special="all"
        marked = f"{next(iter(tokenizer.special_tokens))}hello there"
        assert llm.tokenize(marked.encode(), add_bos=False, special=True) == tokenizer.encode(marked, "all")
    llm.close()
