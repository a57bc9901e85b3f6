"""Pretrained weights: HF folders (single, sharded, .bin), Meta layout, export to HF, errors, hub cache."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers

from scratchllm.checkpoints.io import save_model
from scratchllm.checkpoints.load import load_checkpoint
from scratchllm.cli.main import main
from scratchllm.errors import ScratchLLMError
from scratchllm.generation.generate import GenerationConfig, generate
from scratchllm.models import build_model

from .conftest import GPT2_BPE

IDS = torch.tensor([[15496, 11, 314, 716, 257, 3303, 2746], [40, 367, 2885, 1464, 1807, 3619, 402]])


def _randomize(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.normal_(1.0, 0.1)


def _gpt2_tokenizer_files(folder):
    """A GPT-2 tokenizer saved by transformers itself (it writes tokenizer.json), from the offline BPE files."""
    vocab = json.loads((GPT2_BPE / "encoder.json").read_text())
    lines = (GPT2_BPE / "vocab.bpe").read_text().splitlines()[1:]
    merges = [tuple(line.split(" ")) for line in lines if line]
    transformers.GPT2TokenizerFast(vocab=vocab, merges=merges).save_pretrained(folder)


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-gpt2")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64)).eval()
    _randomize(model)
    model.save_pretrained(folder)
    _gpt2_tokenizer_files(folder)
    return folder, model


@pytest.fixture(scope="module")
def hf_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                                   num_hidden_layers=2, max_position_embeddings=64, vocab_size=50257)  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    _randomize(model)
    return model


def test_hf_gpt2_folder_logits_tokenizer_and_generation(hf_gpt2):
    folder, hf = hf_gpt2
    loaded = load_checkpoint(folder, dtype="fp32", device="cpu")
    assert loaded.source == "huggingface" and loaded.tokenizer.encode("Hello, I am") == [15496, 11, 314, 716]
    with torch.no_grad():
        assert (loaded.model(IDS) - hf(IDS).logits).abs().max() < 1e-4
    ours = generate(loaded.model, [IDS[0].tolist()], GenerationConfig(max_new_tokens=20)).tokens[0]
    theirs = hf.generate(IDS[:1], attention_mask=torch.ones_like(IDS[:1]), max_new_tokens=20, min_new_tokens=20,
                         do_sample=False, pad_token_id=0)[0, IDS.shape[1]:]  # fmt: skip
    assert ours == theirs.tolist()


@pytest.mark.parametrize("layout", ["sharded", "bin"])
def test_hf_llama_sharded_and_bin(tmp_path, hf_llama, layout):
    if layout == "sharded":
        hf_llama.save_pretrained(tmp_path, max_shard_size="2MB")
        assert (tmp_path / "model.safetensors.index.json").exists()
    else:
        hf_llama.config.save_pretrained(tmp_path)
        torch.save(hf_llama.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_checkpoint(tmp_path, dtype="fp32", device="cpu")
    with torch.no_grad():
        assert (loaded.model(IDS) - hf_llama(IDS).logits).abs().max() < 1e-4


def _to_meta_layout(hf_model, folder, shards: int = 1):
    """Write a Meta-style folder (interleaved RoPE rows, Meta names, params.json) from a HF Llama model."""
    cfg = hf_model.config
    sd = hf_model.state_dict()

    def unpermute(w, heads):  # HF's rotate-half rows -> Meta's interleaved rows
        rows, cols = w.shape
        return w.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)

    meta = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
            "output.weight": sd["lm_head.weight"]}  # fmt: skip
    for i in range(cfg.num_hidden_layers):
        h = f"model.layers.{i}."
        meta.update({
            f"layers.{i}.attention.wq.weight": unpermute(sd[h + "self_attn.q_proj.weight"], cfg.num_attention_heads),
            f"layers.{i}.attention.wk.weight": unpermute(sd[h + "self_attn.k_proj.weight"], cfg.num_key_value_heads),
            f"layers.{i}.attention.wv.weight": sd[h + "self_attn.v_proj.weight"],
            f"layers.{i}.attention.wo.weight": sd[h + "self_attn.o_proj.weight"],
            f"layers.{i}.feed_forward.w1.weight": sd[h + "mlp.gate_proj.weight"],
            f"layers.{i}.feed_forward.w3.weight": sd[h + "mlp.up_proj.weight"],
            f"layers.{i}.feed_forward.w2.weight": sd[h + "mlp.down_proj.weight"],
            f"layers.{i}.attention_norm.weight": sd[h + "input_layernorm.weight"],
            f"layers.{i}.ffn_norm.weight": sd[h + "post_attention_layernorm.weight"],
        })  # fmt: skip
    split = {"tok_embeddings": 1, "wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0, "w3": 0, "w2": 1, "output": 0}
    for s in range(shards):
        part = {}
        for name, t in meta.items():
            dim = split.get(name.split(".")[-2])
            part[name] = t.chunk(shards, dim=dim)[s].clone() if dim is not None else t.clone()
        torch.save(part, folder / f"consolidated.{s:02d}.pth")
    # Meta's width formula: int(2 * 4 * 64 / 3) = 170, times 0.75 = 127, rounded up to 32s = 128.
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
              "n_kv_heads": cfg.num_key_value_heads, "vocab_size": cfg.vocab_size,
              "multiple_of": 32, "ffn_dim_multiplier": 0.75,
              "norm_eps": cfg.rms_norm_eps, "rope_theta": 10000.0}  # fmt: skip
    (folder / "params.json").write_text(json.dumps(params))


@pytest.mark.parametrize("shards", [1, 2])
def test_meta_layout(tmp_path, hf_llama, gpt2_tokenizer, shards):
    import base64

    _to_meta_layout(hf_llama, tmp_path, shards)
    # Llama 3's layout: ranks, then 256 special tokens after them; 50,001 ranks make 50,257 ids, the model's.
    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in gpt2_tokenizer.ranks.items() if r < 50_001]
    (tmp_path / "tokenizer.model").write_text("\n".join(lines))
    loaded = load_checkpoint(tmp_path, dtype="fp32", device="cpu")
    assert loaded.source == "meta" and loaded.tokenizer.encode("Hello, I am") == [15496, 11, 314, 716]
    with torch.no_grad():
        assert (loaded.model(IDS) - hf_llama(IDS).logits).abs().max() < 1e-4


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_convert_to_hf_and_back(tmp_path, preset, capsys):
    from scratchllm.tokenizers import train_bpe

    from .conftest import VERDICT

    tokenizer = train_bpe([VERDICT.read_text()], 512, progress=False)
    torch.manual_seed(0)
    model = build_model(preset, tie_embeddings=preset == "gpt-tiny")
    _randomize(model)
    run = tmp_path / "run"
    save_model(model, run)
    tokenizer.save(run / "scratchllm-tokenizer.json")
    assert main(["convert", "--to", "hf", str(run), str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = VERDICT.read_text()[:2000] + " unseen: ünïcödé 🤖 <|endoftext|>"
    assert hf_tok(text)["input_ids"] == tokenizer.encode(text, allowed_special="all")
    ids = torch.tensor([tokenizer.encode(VERDICT.read_text()[:300])[:60]])
    with torch.no_grad():
        assert (hf(ids).logits - model.eval()(ids)).abs().max() < 1e-4
    assert main(["convert", "--to", "scratchllm", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back = load_checkpoint(tmp_path / "back", dtype="fp32", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(back.model.state_dict().values(), model.state_dict().values()))
    assert back.tokenizer.encode(text, allowed_special="all") == tokenizer.encode(text, allowed_special="all")


def _broken_folder(tmp_path, hf_gpt2, change):
    folder, hf = hf_gpt2
    target = tmp_path / "broken"
    shutil.copytree(folder, target)
    from safetensors.torch import load_file, save_file

    tensors = load_file(target / "model.safetensors")
    change(tensors, target)
    save_file(tensors, target / "model.safetensors")
    return target


@pytest.mark.parametrize(
    "change,match",
    [(lambda t, f: t.pop("transformer.h.1.mlp.c_fc.weight"), "missing tensor 'transformer.h.1.mlp.c_fc.weight'"),
     (lambda t, f: t.update(extra=torch.zeros(3)), "unexpected tensor 'extra'"),
     (lambda t, f: t.update({"transformer.h.0.attn.c_proj.weight": torch.zeros(64, 63)}), "c_proj.weight|attn.proj"),
     (lambda t, f: (f / "config.json").write_text(json.dumps({"model_type": "bert"})), "model_type 'bert'")],
)  # fmt: skip
def test_bad_hf_folders(tmp_path, hf_gpt2, change, match):
    folder = _broken_folder(tmp_path, hf_gpt2, change)
    with pytest.raises(ScratchLLMError, match=match):
        load_checkpoint(folder, dtype="fp32", device="cpu")


def test_hub_cache_logic_offline(tmp_path, monkeypatch):
    from scratchllm.checkpoints import download
    from scratchllm.hub import download_file, repo_dir

    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path / "cache"))
    assert download.resolve_repo("gpt2") == "openai-community/gpt2"
    assert download.resolve_repo("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"
    assert download.resolve_repo("gpt-tiny") is None
    assert repo_dir("openai-community/gpt2") == tmp_path / "cache" / "hub" / "openai-community--gpt2"
    with pytest.raises(ScratchLLMError, match="invalid hub repository"):
        repo_dir("a/b/c")
    # The real download code on a local file:// URL: atomic, cached, with a clear error when absent.
    source = tmp_path / "src.json"
    source.write_text('{"a": 1}')
    dest = tmp_path / "cache" / "x" / "config.json"
    assert download_file(source.as_uri(), dest, progress=False).read_text() == '{"a": 1}'
    source.write_text("changed")
    assert download_file(source.as_uri(), dest, progress=False).read_text() == '{"a": 1}'  # cached
    with pytest.raises(ScratchLLMError, match="download of .* failed"):
        download_file((tmp_path / "missing").as_uri(), tmp_path / "cache" / "y", progress=False)
    assert not (tmp_path / "cache" / "y.part").exists()
    assert download.cached_folder("openai-community/gpt2") is None
    folder = repo_dir("openai-community/gpt2")
    folder.mkdir(parents=True)
    (folder / ".complete").write_text("done")
    assert download.cached_folder("openai-community/gpt2") == folder


def test_sentencepiece_tokenizer(tmp_path):
    import sentencepiece as spm

    from scratchllm.tokenizers.formats import load_tokenizer
    from scratchllm.tokenizers.sentencepiece import SentencePieceTokenizer

    from .conftest import VERDICT

    spm.SentencePieceTrainer.train(input=str(VERDICT), model_prefix=str(tmp_path / "tokenizer"), vocab_size=400,
                                   byte_fallback=True, model_type="bpe")  # fmt: skip
    tok = load_tokenizer(tmp_path / "tokenizer.model")
    assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == 400
    text = "I had always thought Jack Gisburn rather a cheap genius 日本"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert b"".join(tok.token_bytes(i) for i in ids).decode().strip() == text
    assert tok.encode(text, add_bos=True)[0] == tok.sp.bos_id()


# Meta's published params.json files (Llama 2 leaves vocab_size to the tokenizer: -1).
META_PARAMS = {
    "llama3.2-1b": {"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
                    "ffn_dim_multiplier": 1.5, "multiple_of": 256, "norm_eps": 1e-05, "rope_theta": 500000.0,
                    "use_scaled_rope": True},
    "llama3.1-8b": {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
                    "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "norm_eps": 1e-05, "rope_theta": 500000.0,
                    "use_scaled_rope": True},
    "llama3-8b": {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": -1,
                  "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0},
    "llama2-7b": {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05,
                  "vocab_size": -1},
}  # fmt: skip


@pytest.mark.parametrize("name", list(META_PARAMS))
def test_meta_params_json_gives_the_hf_derived_preset(name):
    """Feed-forward width, context (Llama 2 / 3 / scaled 3.1), RoPE scaling factor (32 for 1B/3B, 8 for 8B)
    and a vocabulary taken from the tokenizer when params.json says -1: as the presets built from HF configs."""
    from scratchllm.checkpoints.meta import config_from_params
    from scratchllm.models import get_config

    tokenizer_vocab = 32000 if name.startswith("llama2") else 128256
    got = config_from_params(META_PARAMS[name], tokenizer_vocab, name).to_dict()
    expected = get_config(name).to_dict()
    for field in ("name", "tie_embeddings"):  # Meta stores `output` separately even where HF ties it
        got.pop(field), expected.pop(field)
    assert got == expected


def test_auto_dtype_follows_the_stored_weights(tmp_path):
    """Like transformers' dtype="auto": an fp32 folder loads in fp32 (and then decodes greedily exactly as
    transformers does), a bf16 folder in bf16 where the CPU has native bf16."""
    from scratchllm.checkpoints.load import load_checkpoint
    from scratchllm.generation.generate import GenerationConfig, generate
    from scratchllm.hardware import cpu_has_bf16

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=300,
                                  initializer_range=0.3)  # fmt: skip
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "fp32")
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    hf.float()
    loaded = load_checkpoint(tmp_path / "fp32", "auto", "cpu")
    assert loaded.model.dtype == torch.float32
    prompt = [5, 17, 42, 7]
    ours = generate(loaded.model, [prompt], GenerationConfig(max_new_tokens=20)).tokens[0]
    ids = torch.tensor([prompt])
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, min_new_tokens=20,
                         do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()  # fmt: skip
    assert ours == theirs
    expected = torch.bfloat16 if cpu_has_bf16() else torch.float32
    assert load_checkpoint(tmp_path / "bf16", "auto", "cpu").model.dtype == expected
    assert load_checkpoint(tmp_path / "fp32", "bf16", "cpu").model.dtype == torch.bfloat16  # asked for: given


def test_random_prefix_names_the_preset_and_the_offline_error_says_so(monkeypatch, tmp_path):
    from scratchllm.checkpoints import download
    from scratchllm.checkpoints.load import load_checkpoint
    from scratchllm.errors import ScratchLLMError

    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path))

    def offline(*args, **kwargs):
        raise ScratchLLMError("cannot reach the hub (offline)")

    monkeypatch.setattr(download, "download_model", offline)
    with pytest.raises(ScratchLLMError, match="offline, --checkpoint random:gpt2-medium builds"):
        load_checkpoint("gpt2-medium", "fp32", "cpu")
    tiny = load_checkpoint("random:gpt-tiny", "fp32", "cpu")
    assert tiny.source == "random" and tiny.model.config.n_layers == 2
    with pytest.raises(ScratchLLMError, match="not a model preset"):
        load_checkpoint("random:nothing", "fp32", "cpu")
