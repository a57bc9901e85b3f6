"""Small random transformers models of every family we speak, and ours built from the same weights.

One place that knows how to build each family's HF class from a tiny config, so parity, generation, export
and PEFT tests run over every family by parametrising on `FAMILIES`.
"""

from __future__ import annotations

import torch
import transformers

from scratchllm.checkpoints.hf import config_from_hf, state_dict_from_hf
from scratchllm.models import Transformer

# pad_token_id None: HF's Embedding(padding_idx=...) gives the pad row no gradient, where every row of ours
# trains (a pad token never occurs in training data, so the difference only shows on random ids)
_LLAMA_LIKE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                   num_hidden_layers=2, max_position_embeddings=128, vocab_size=300, pad_token_id=None)  # fmt: skip
BUILDERS = {
    "gpt2": lambda **kw: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        **{"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128, "vocab_size": 300, **kw})),
    "llama": lambda **kw: transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**_LLAMA_LIKE, **kw})),
    # head_dim 32 != 64 / 4: Qwen3's head width is its own field
    "qwen3": lambda **kw: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        **{**_LLAMA_LIKE, "head_dim": 32, "tie_word_embeddings": True, **kw})),
    "qwen3_moe": lambda **kw: transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
        **{**_LLAMA_LIKE, "head_dim": 32, "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2,
           "norm_topk_prob": True, **kw})),
    # windows of 8 (prompts and outputs of the tests run far past them), 1 global layer in 3 / 4
    "gemma3": lambda **kw: transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        **{**_LLAMA_LIKE, "num_hidden_layers": 3, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 8,
           "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
           "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                               "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}, **kw})),
    "olmo3": lambda **kw: transformers.Olmo3ForCausalLM(transformers.Olmo3Config(
        **{**_LLAMA_LIKE, "num_hidden_layers": 4, "sliding_window": 8, **kw})),
}  # fmt: skip
FAMILIES = list(BUILDERS)


def hf_model(arch: str, seed: int = 0, **config) -> torch.nn.Module:
    """A random HF model of `arch`; routers get large weights so no expert choice is a near tie."""
    torch.manual_seed(seed)
    model = BUILDERS[arch](**config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 1.0)
    return model


def ours_from(hf: torch.nn.Module, name: str = "hf-model") -> Transformer:
    config = config_from_hf(hf.config.to_dict(), name)
    ours = Transformer(config).eval()
    ours.load_state_dict(state_dict_from_hf(hf.state_dict(), config))
    return ours


def pair(arch: str, seed: int = 0, **config) -> tuple[torch.nn.Module, Transformer]:
    hf = hf_model(arch, seed, **config)
    return hf, ours_from(hf)


# Qwen2/Qwen3's published pre-tokenizer: GPT-4's rules but every digit on its own; text NFC-normalised first.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def qwen_style_tokenizer(texts: list[str], vocab_size: int):
    """A tokenizer laid out as Qwen's tokenizer.json (NFC, Split regex + ByteLevel, byte-level BPE, its chat
    specials after the vocabulary), trained offline on `texts` with HF `tokenizers`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])  # fmt: skip
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    hf.train_from_iterator(texts, trainer)
    hf.add_special_tokens(QWEN_SPECIALS)
    return hf


GEMMA_SPECIALS = ["<start_of_turn>", "<end_of_turn>"]


def gemma_style_sentencepiece(texts: list[str], folder, vocab_size: int):
    """A SentencePiece model laid out as Gemma's tokenizer.model (BPE with byte fallback, digits split, no dummy
    prefix, whitespace kept, <pad> <eos> <bos> <unk> at ids 0-3, its turn markers as user pieces), trained
    offline with the `sentencepiece` library; written to `folder`/tokenizer.model with the tokenizer_config.json
    that lets transformers' GemmaTokenizer read it."""
    import json

    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=GEMMA_SPECIALS,
        allow_whitespace_only_pieces=True, split_by_whitespace=False, character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GemmaTokenizer"}))
    return folder / "tokenizer.model"
