"""GGUF export held to llama.cpp itself (llama-cpp-python, built from source by `make`): its greedy tokens, its
logits, its tokenizer and its chat template against ours; `gguf`'s reader on every tensor; the refusals.

The trained models are a small GPT-2 and a small Llama 3 with Llama 3.1 RoPE scaling (acting inside their 64
positions: original context 16), pretrained here for a few hundred steps on the verdict; the later families
are random models whose logits llama.cpp must reproduce.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import gguf
import llama_cpp
import numpy as np
import pytest
import torch

from scratchllm.checkpoints.load import load_checkpoint
from scratchllm.cli.main import main
from scratchllm.errors import ScratchLLMError
from scratchllm.models import Transformer
from scratchllm.models.config import ModelConfig
from scratchllm.models.families import PRESETS
from scratchllm.prompts import STYLES
from scratchllm.tokenizers.formats import from_hf_tokenizer_json, load_tokenizer
from scratchllm.training.config import PretrainConfig
from scratchllm.training.trainer import pretrain

from .conftest import VERDICT
from .hf_families import gemma_style_sentencepiece, qwen_style_tokenizer

PROMPTS = ["I had always thought", "\"Mrs. Gisburn,\" he said", "The picture was"]
HARD_TEXT = (
    "def f(x):\n    return {'a': x**2}  # ok?!\n\n\n   spaces\t\ttabs\r\n"
    "emoji 🦙🎉👍🏽 中文字符 日本語のテキスト 한국어 naïve café — “DON'T”\n"
    "1234567 3.14159 $100,000.00 in 2026, 12:30\n \n"
)
NUMBERS = " ".join(str(n) for n in range(100, 1000, 7)) * 20
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_context_length": 16}  # fmt: skip
TWO_TURNS = [
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who painted it?"},
    {"role": "assistant", "content": "Jack Gisburn."}, {"role": "user", "content": "Why did he stop?"},
]  # fmt: skip


def open_llama(path, exact: bool = False, **kw) -> llama_cpp.Llama:
    """llama.cpp on `path`; `exact` keeps its KV cache in f32 (its default, f16, rounds keys and values,
    which is what users run and what the greedy tests use)."""
    f32 = 0  # GGML_TYPE_F32
    return llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, verbose=False, logits_all=exact,
                           **({"type_k": f32, "type_v": f32} if exact else {}), **kw)  # fmt: skip


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
@pytest.mark.parametrize("qtype,first,tol", [("q8_0", 8, 0.05), ("q4_0", 1, 0.4)])
def test_quantised_files_stay_close(runs, family, qtype, first, tol, tmp_path):
    """q8_0: greedy agrees with ours on the first 8 tokens of every prompt (24 measured) and every logit is
    within 5% of our logits' spread (1.5-3% measured); q4_0: the first token, within 40% (15-30%)."""
    export(runs[family], tmp_path / "m.gguf", qtype)
    loaded = load_checkpoint(runs[family], "fp32")
    llm, exact = open_llama(tmp_path / "m.gguf"), open_llama(tmp_path / "m.gguf", exact=True)
    for prompt in PROMPTS:
        ids = loaded.tokenizer.encode(prompt)
        with torch.no_grad():
            ours = loaded.model(torch.tensor([ids]))[0].numpy()
        assert np.abs(llama_logits(exact, ids) - ours).max() < tol * ours.std(), prompt
        assert llama_greedy(llm, ids, first) == our_greedy(loaded.model, ids, first), prompt
    llm.close()
    exact.close()


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
    assert not config.tie_embeddings
    assert set(tensors) == expected | {"output.weight"}
    kv = config.n_kv_heads * config.head_dim
    assert list(tensors["blk.0.attn_k.weight"].shape) == [config.emb_dim, kv]  # GGUF lists dims innermost first
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [config.hidden_dim, config.emb_dim]
    kinds = gguf.GGMLQuantizationType
    for name, t in tensors.items():  # rows that do not split into 32-value blocks fall back to f16
        expected = kinds.F32 if len(t.shape) == 1 else kinds.Q8_0 if t.shape[0] % 32 == 0 else kinds.F16
        assert t.tensor_type == expected, name
    assert tensors["blk.0.ffn_down.weight"].tensor_type == kinds.F16  # 176 = llama-tiny's hidden width
    field = reader.get_field("llama.rope.freq_base")
    assert field.contents() == pytest.approx(config.rope_base)
    assert reader.get_field("tokenizer.ggml.pre").contents() == "llama-bpe"
    assert reader.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q8_0


@pytest.mark.parametrize("tokenizer_kind", ["gpt2", "trained-gpt4", "qwen", "gemma"])
def test_llama_cpp_tokenizes_hard_text_to_our_ids(tokenizer_kind, runs, tmp_path):
    if tokenizer_kind == "gpt2":
        tokenizer, arch = load_tokenizer("gpt2"), "gpt-tiny"
    elif tokenizer_kind == "trained-gpt4":  # with merges of 2- and 3-digit runs, which only llama-bpe forms
        from scratchllm.tokenizers.train import train_bpe

        tokenizer = train_bpe([VERDICT.read_text(), NUMBERS], 700, progress=False)
        assert any(token.isdigit() and len(token) > 1 for token in tokenizer.ranks)
        arch = "llama-tiny"
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


def random_model(preset: str, vocab_size: int, seed: int = 0, **changes) -> Transformer:
    """A random model of `preset`; routers get large weights so no expert choice is a near tie."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(name=preset, **{**PRESETS[preset], "vocab_size": vocab_size, **changes})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ff.router.weight"):
                p.normal_(0.0, 1.0)
    return model


# Olmo 3 and Gemma 3 with 8-position windows that the 20-token prompt runs past; Gemma with llama.cpp's
# fixed pattern of one global layer in six.
# Tolerances relative to the logits' spread: fp32 summed in another order, except that ggml evaluates GELU
# (Gemma's GeGLU) through a table of f16 values.
LATER_FAMILIES = [("qwen3-tiny", {}, 1e-4), ("qwen3-moe-tiny", {}, 1e-4), ("olmo3-tiny", {}, 1e-4),
                  ("gemma3-tiny", {"n_layers": 6, "global_every": 6}, 1e-2)]  # fmt: skip


@pytest.mark.parametrize("preset,changes,tol", LATER_FAMILIES, ids=[p for p, *_ in LATER_FAMILIES])
def test_later_families_run_in_llama_cpp_with_our_logits(preset, changes, tol, tmp_path):
    from scratchllm.checkpoints.gguf import to_gguf

    tokenizer = load_tokenizer("gpt2")
    model = random_model(preset, tokenizer.vocab_size, **changes)
    to_gguf(model, tokenizer, tmp_path / "m.gguf", "f32")
    ids = tokenizer.encode("It was a deep disappointment to him that his wife had never seen the picture at all.")
    assert len(ids) > 2 * (model.config.sliding_window or 0)
    llm = open_llama(tmp_path / "m.gguf", exact=True)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].numpy()
    assert np.abs(llama_logits(llm, ids) - ours).max() < tol * ours.std()
    assert llama_greedy(llm, ids[:4], 12) == our_greedy(model, ids[:4], 12)
    llm.close()


@pytest.mark.parametrize("style", sorted(STYLES))
def test_llama_cpp_renders_our_chat_template(style, tmp_path):
    """The template the file carries, applied by llama-cpp-python's Jinja formatter (what its chat
    completion runs), gives our rendering of a two-turn conversation with a system message."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from scratchllm.checkpoints.gguf import to_gguf

    tokenizer = load_tokenizer("gpt2")
    to_gguf(random_model("gpt-tiny", tokenizer.vocab_size), tokenizer, tmp_path / "m.gguf", "f16", STYLES[style])
    llm = open_llama(tmp_path / "m.gguf", vocab_only=True)
    template = llm.metadata["tokenizer.chat_template"]
    rendered = Jinja2ChatFormatter(template, eos_token="<|endoftext|>", bos_token="<|endoftext|>")(messages=TWO_TURNS)
    assert rendered.prompt == STYLES[style].render(TWO_TURNS)
    llm.close()


def test_a_chat_through_llama_cpp_answers_as_we_do(runs, tmp_path):
    """llama-cpp-python's chat completion on the exported Llama (the phi3 style, short enough for its 64
    positions): it formats the conversation with the file's template, tokenizes it with the file's vocabulary
    and greedily answers our tokens."""
    from scratchllm.checkpoints.gguf import to_gguf

    loaded = load_checkpoint(runs["llama"], "fp32")
    style = STYLES["phi3"]
    to_gguf(loaded.model, loaded.tokenizer, tmp_path / "m.gguf", "f32", style, (loaded.tokenizer.eot_id,))
    llm = open_llama(tmp_path / "m.gguf")
    messages = TWO_TURNS[1:2]
    reply = llm.create_chat_completion(messages, temperature=0.0, top_k=1, max_tokens=12)
    ids = loaded.tokenizer.encode(style.render(messages), allowed_special="all")
    ours = our_greedy(loaded.model, ids, 12)
    if loaded.tokenizer.eot_id in ours:
        ours = ours[: ours.index(loaded.tokenizer.eot_id)]
    assert reply["choices"][0]["message"]["content"] == loaded.tokenizer.decode(ours)
    assert reply["usage"]["prompt_tokens"] == len(ids)
    llm.close()


def test_a_lora_run_exports_its_merged_weights_and_its_style(tmp_path):
    from scratchllm.training.instruct import finetune_instruct

    from .test_instruct import COLORS, small_run

    data = tmp_path / "colors.json"
    data.write_text(json.dumps([{"instruction": f"What color is the {t}?", "input": "", "output": f"The {t} is {c}."}
                                for t, c in COLORS]))  # fmt: skip
    run = tmp_path / "run"
    finetune_instruct(small_run(data, run, lora=True, lora_rank=8, lora_alpha=16, max_steps=60, eval_every=60,
                                save_every=60))  # fmt: skip
    export(run, tmp_path / "m.gguf")
    loaded = load_checkpoint(run, "fp32")  # the run folder holds the adapters merged into the base
    ids = loaded.tokenizer.encode(STYLES["alpaca"].format_instruction("What color is the sky?"))
    llm = open_llama(tmp_path / "m.gguf")
    assert llama_greedy(llm, ids, 12) == our_greedy(loaded.model, ids, 12)
    llm.close()
    commands = modelfile_commands((tmp_path / "m.Modelfile").read_text())  # the run's alpaca style
    assert commands[0] == ("FROM", "./m.gguf") and dict(commands)["TEMPLATE"] == STYLES["alpaca"].ollama_template
    assert ("PARAMETER STOP", "\n\n### Instruction:") in commands


def test_a_model_with_live_adapters_is_written_merged(tmp_path):
    from scratchllm.checkpoints.gguf import to_gguf
    from scratchllm.models.lora import LoRAConfig, apply_lora, set_lora_enabled

    tokenizer = load_tokenizer("gpt2")
    model = random_model("llama-tiny", tokenizer.vocab_size)
    apply_lora(model, LoRAConfig(rank=4, alpha=8.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0.0, 0.5)
    to_gguf(model, tokenizer, tmp_path / "m.gguf", "f32")
    ids = tokenizer.encode("The picture was")
    llm = open_llama(tmp_path / "m.gguf", exact=True)
    theirs = llama_logits(llm, ids)
    llm.close()
    with torch.no_grad():
        adapted = model(torch.tensor([ids]))[0].numpy()
        set_lora_enabled(model, False)
        base = model(torch.tensor([ids]))[0].numpy()
    tol = 1e-4 * adapted.std()  # fp32, summed in another order
    assert np.abs(theirs - adapted).max() < tol and np.abs(theirs - base).max() > 100 * tol


def test_what_llama_cpp_cannot_hold_is_refused_and_nothing_is_written(tmp_path, capsys):
    from scratchllm.checkpoints.gguf import to_gguf

    from .test_hostile import fails, snapshot

    tokenizer = load_tokenizer("gpt2")
    cases = [
        (random_model("gemma3-tiny", tokenizer.vocab_size), "every 6th layer global"),  # its preset: 1 in 3
        (random_model("qwen3-moe-tiny", tokenizer.vocab_size, norm_topk=False), "norm_topk off"),
        (random_model("gpt-tiny", tokenizer.vocab_size, norm="rmsnorm"), "mixes components"),
    ]
    for model, reason in cases:
        with pytest.raises(ScratchLLMError, match=reason):
            to_gguf(model, tokenizer, tmp_path / "x.gguf")
    with pytest.raises(ScratchLLMError, match="50257 tokens but the model only 300 embedding rows"):
        to_gguf(random_model("gpt-tiny", 300), tokenizer, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp*"))

    # the CLI: an existing OUT or Modelfile is kept without --overwrite; OUT never inside SOURCE
    from scratchllm.checkpoints.convert import to_scratchllm

    source = to_scratchllm(random_model("gpt-tiny", tokenizer.vocab_size), tokenizer, tmp_path / "src")
    before = snapshot(source)
    fails(capsys, ["convert", "--to", "gguf", str(source), str(source / "m.gguf")], "sits inside SOURCE")
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.Modelfile").write_text("mine")
    fails(capsys, ["convert", "--to", "gguf", str(source), str(out / "m.gguf")], "already exists", "--overwrite")
    fails(capsys, ["convert", "--to", "gguf", str(source), str(out / "m.gguf"), "--dtype", "bf16"], "--type")
    assert snapshot(out) == {"m.Modelfile": b"mine"} and snapshot(source) == before
    export(source, out / "m.gguf", "q8_0", "--overwrite")
    assert (out / "m.Modelfile").read_text().startswith("# Written by scratchllm")


# Ollama renders a Modelfile's TEMPLATE with Go's text/template over {Messages: [{Role, Content}]}; this
# program does the same for the test (Ollama itself cannot be installed offline, Go can: CI installs it).
GO_RENDERER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct{ Role, Content string }

func main() {
	var in struct {
		Template string
		Messages []Message
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("modelfile").Parse(in.Template))
	if err := t.Execute(os.Stdout, map[string]any{"Messages": in.Messages}); err != nil {
		panic(err)
	}
}
"""


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    if shutil.which("go") is None:
        reason = "Go (Debian's golang-go) is not installed: the Ollama templates are rendered with Go's text/template"
        if os.environ.get("CI"):
            raise RuntimeError(f"CI: {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("go")
    (root / "main.go").write_text(GO_RENDERER)
    env = {**os.environ, "GOCACHE": str(root / "cache"), "GOPATH": str(root / "path"), "GOFLAGS": "-mod=mod"}
    subprocess.run(["go", "build", "-o", str(root / "render"), str(root / "main.go")], check=True, env=env, cwd=root)

    def render(template: str, messages: list[dict]) -> str:
        payload = json.dumps({"Template": template, "Messages": [{"Role": m["role"], "Content": m["content"]}
                                                                 for m in messages]})  # fmt: skip
        return subprocess.run([str(root / "render")], input=payload, capture_output=True, text=True, check=True).stdout

    return render


def modelfile_commands(text: str) -> list[tuple[str, str]]:
    """(command, argument) pairs of a Modelfile, read by the rules of Ollama's parser: a bare argument runs
    to the end of its line, a quoted one ("..." or \"\"\"...\"\"\") to its closing quotes, newlines included."""
    commands, rest = [], text
    while rest:
        line, _, rest = rest.partition("\n")
        if not line.strip() or line.startswith("#"):
            continue
        name, _, arg = line.partition(" ")
        if name.upper() == "PARAMETER":
            key, _, arg = arg.partition(" ")
            name = f"PARAMETER {key}"
        for quote in ('"""', '"'):
            if arg.startswith(quote):
                while not (len(arg) >= 2 * len(quote) and arg.endswith(quote)):
                    more, _, rest = rest.partition("\n")
                    arg += "\n" + more
                arg = arg[len(quote) : -len(quote)]
                break
        commands.append((name.upper(), arg))
    return commands


@pytest.mark.parametrize("style", sorted(STYLES))
def test_the_modelfile_template_renders_our_prompt_in_go(style, go_render):
    from scratchllm.checkpoints.gguf import modelfile_text

    commands = modelfile_commands(modelfile_text("m.gguf", STYLES[style], ("<|endoftext|>",)))
    assert commands[0] == ("FROM", "./m.gguf")
    template = dict(commands)["TEMPLATE"]
    assert go_render(template, TWO_TURNS) == STYLES[style].render(TWO_TURNS)
    assert go_render(template, TWO_TURNS[1:2]) == STYLES[style].render(TWO_TURNS[1:2])
    stops = [arg for name, arg in commands if name == "PARAMETER STOP"]
    assert stops == list(dict.fromkeys([*STYLES[style].stop_strings, "<|endoftext|>"]))
