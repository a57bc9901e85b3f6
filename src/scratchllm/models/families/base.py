"""What a model family is: the one object that holds everything that differs between families.

Every other module asks the family (`config.family`) and never compares architecture names: loading and
exporting HuggingFace folders (config keys, tensor names in both directions), PEFT target names, presets,
hub names, the chat style of its instruct checkpoints. The model code itself reads only component fields of
`ModelConfig` (norm, mlp, positions, qk_norm, ...), which a family fills in as its defaults, so one
`Transformer` builds every family and a family file never holds a `torch.nn.Module`.

This module and the family files import no torch at module level: reading a config or listing presets stays
instant. Weight mapping works on dicts of tensors and imports torch only inside the functions that need it.

Most families since Llama share HuggingFace's Llama layout (`model.layers.N.self_attn.q_proj`, ...):
`LlamaLayout` implements it once, and a family adds its extra tensors (QK norms, sandwich norms, experts)
through `layer_pairs` / `extra_from_hf` / `extra_to_hf`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from scratchllm.errors import ScratchLLMError

Tensors = dict  # name -> torch.Tensor (torch is not imported here)


def take(sd: Tensors, key: str, used: set[str]):
    if key not in sd:
        raise ScratchLLMError(f"checkpoint is missing tensor {key!r}")
    used.add(key)
    return sd[key]


class Family:
    """Base of every family: the declarations a family file fills in, and default HF behaviour."""

    name: ClassVar[str]
    hf_model_types: ClassVar[tuple[str, ...]]  # config.json `model_type` values this family reads
    hf_architecture: ClassVar[str]  # config.json `architectures[0]` it writes
    components: ClassVar[dict[str, Any]]  # ModelConfig component fields this family fills in when None
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    hub_names: ClassVar[dict[str, str]] = {}
    chat_style: ClassVar[str | None] = None  # prompt style of the family's instruct checkpoints
    tokenizer_kind: ClassVar[str] = "byte-level BPE"  # what its tokenizer files hold (said by `info`)
    hf_sentencepiece_class: ClassVar[str] = "LlamaTokenizer"  # transformers' class for a tokenizer.model
    peft_fan_in_fan_out: ClassVar[bool] = False  # HF stores its Linear weights transposed (GPT-2's Conv1D)
    ignorable: ClassVar[tuple[str, ...]] = ()  # tensor-name endings in HF files that hold no weights
    gguf_arch: ClassVar[str | None] = None  # llama.cpp's name for the architecture; None: it has none

    # -- configs ---------------------------------------------------------------------------------------------
    def config_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        """config.json -> `ModelConfig` fields (the caller builds the config, so this module needs no import)."""
        raise NotImplementedError

    def config_to_hf(self, config) -> dict[str, Any]:
        raise NotImplementedError

    def check_exportable(self, config) -> None:
        """Refuse a config whose components differ from what the family's HF class can hold."""
        changed = [f"{k}={getattr(config, k)!r}" for k, v in self.components.items() if getattr(config, k) != v]
        if changed:
            raise ScratchLLMError(f"model {config.name!r} mixes components ({', '.join(changed)}) that "
                                  f"transformers' {self.hf_architecture} cannot hold")  # fmt: skip

    # -- weights ---------------------------------------------------------------------------------------------
    def tensors_from_hf(self, sd: Tensors, config) -> Tensors:
        raise NotImplementedError

    def tensors_to_hf(self, sd: Tensors, config) -> Tensors:
        raise NotImplementedError

    # -- GGUF (llama.cpp) -------------------------------------------------------------------------------------
    def gguf_hparams(self, config) -> dict[str, Any]:
        """The architecture's GGUF keys (without the `ARCH.` prefix) -> value; ints are written as uint32,
        floats as float32."""
        raise ScratchLLMError(f"convert --to gguf: llama.cpp has no architecture for the {self.name} family")

    def gguf_tensors(self, sd: Tensors, config) -> Tensors:
        """Our state dict -> llama.cpp's tensor names, each (out, in) like ours; 1-D tensors stay 1-D."""
        raise ScratchLLMError(f"convert --to gguf: llama.cpp has no architecture for the {self.name} family")

    # -- PEFT ------------------------------------------------------------------------------------------------
    def peft_modules(self, name: str, a, b, rank: int, splits: tuple[int, ...]) -> list[tuple[str, Any, Any, int]]:
        """(HF module, A, B, rank) for our LoRA layer `name` (A: (slices*rank, in), B: (out, rank))."""
        raise NotImplementedError

    def peft_expert_parameter(self, key: str) -> tuple[str, str, bool]:
        """(HF module, its target parameter as PEFT names it, whether PEFT wraps it innermost) for our adapted
        expert stack `key` ("blocks.N.ff.gate_up")."""
        raise ScratchLLMError(f"PEFT export: the {self.name} family has no expert stacks")


class LlamaLayout(Family):
    """HuggingFace's Llama tensor layout, shared by Llama, Qwen3, Gemma 3 and Olmo 3.

    q, k and v are separate there (`q_proj`, `k_proj`, `v_proj`); we fuse them into one `attn.qkv`.
    """

    hf_architecture = "LlamaForCausalLM"
    ignorable = ("rotary_emb.inv_freq",)
    # ours (inside blocks.N.) -> theirs (inside model.layers.N.), one tensor each
    pairs: ClassVar[dict[str, str]] = {
        "norm1.weight": "input_layernorm.weight", "norm2.weight": "post_attention_layernorm.weight",
        "attn.proj.weight": "self_attn.o_proj.weight", "ff.gate.weight": "mlp.gate_proj.weight",
        "ff.up.weight": "mlp.up_proj.weight", "ff.down.weight": "mlp.down_proj.weight",
    }  # fmt: skip
    peft_names: ClassVar[dict[str, str]] = {"attn.proj": "self_attn.o_proj", "ff.gate": "mlp.gate_proj",
                                            "ff.up": "mlp.up_proj", "ff.down": "mlp.down_proj"}  # fmt: skip

    def layer_pairs(self, config, layer: int) -> dict[str, str]:
        return self.pairs

    def extra_from_hf(self, sd: Tensors, config, used: set[str], layer: int, out: Tensors) -> None:
        """Tensors of layer `layer` that are not one-to-one (MoE experts): none in plain Llama."""

    def extra_to_hf(self, sd: Tensors, config, layer: int, out: Tensors) -> None:
        """The inverse of `extra_from_hf`."""

    def tensors_from_hf(self, sd: Tensors, config) -> Tensors:
        import torch

        used: set[str] = set()
        out: Tensors = {"tok_emb.weight": take(sd, "model.embed_tokens.weight", used)}
        for i in range(config.n_layers):
            h, b = f"model.layers.{i}.", f"blocks.{i}."
            for ours, theirs in self.layer_pairs(config, i).items():
                out[b + ours] = take(sd, h + theirs, used)
            out[f"{b}attn.qkv.weight"] = torch.cat(
                [take(sd, f"{h}self_attn.{n}_proj.weight", used) for n in "qkv"], dim=0
            )
            if config.qkv_bias:
                out[f"{b}attn.qkv.bias"] = torch.cat([take(sd, f"{h}self_attn.{n}_proj.bias", used) for n in "qkv"])
            self.extra_from_hf(sd, config, used, i, out)
        out["final_norm.weight"] = take(sd, "model.norm.weight", used)
        _head_from_hf(sd, config, used, out)
        _check_unused(sd, used, self.ignorable)
        return out

    def tensors_to_hf(self, sd: Tensors, config) -> Tensors:
        sizes = [config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim,
                 config.n_kv_heads * config.head_dim]  # fmt: skip
        out: Tensors = {"model.embed_tokens.weight": sd["tok_emb.weight"]}
        for i in range(config.n_layers):
            h, b = f"model.layers.{i}.", f"blocks.{i}."
            for ours, theirs in self.layer_pairs(config, i).items():
                out[h + theirs] = sd[b + ours]
            for part in ("weight", "bias") if config.qkv_bias else ("weight",):
                for n, w in zip("qkv", sd[f"{b}attn.qkv.{part}"].split(sizes, dim=0)):
                    out[f"{h}self_attn.{n}_proj.{part}"] = w.contiguous()
            self.extra_to_hf(sd, config, i, out)
        out["model.norm.weight"] = sd["final_norm.weight"]
        if not config.tie_embeddings:
            out["lm_head.weight"] = sd["out_head.weight"]
        return out

    def peft_modules(self, name, a, b, rank, splits):
        if name == "out_head":
            return [("lm_head", a, b, rank)]
        i, rest = _block_part(name)
        prefix = f"model.layers.{i}."
        if rest == "attn.qkv":
            rows = b.split(splits)
            return [(f"{prefix}self_attn.{n}_proj", a[s * rank : (s + 1) * rank], rows[s], rank)
                    for s, n in enumerate("qkv")]  # fmt: skip
        if rest not in self.peft_names:
            raise ScratchLLMError(f"PEFT export: no HuggingFace module for LoRA layer {name!r}")
        return [(prefix + self.peft_names[rest], a, b, rank)]

    # -- GGUF: llama.cpp's names for the same layout ---------------------------------------------------------
    # ours (inside blocks.N.) -> llama.cpp's (inside blk.N.); q|k|v and experts are split apart below
    gguf_pairs: ClassVar[dict[str, str]] = {
        "norm1.weight": "attn_norm.weight", "norm2.weight": "ffn_norm.weight",
        "attn.proj.weight": "attn_output.weight", "ff.gate.weight": "ffn_gate.weight",
        "ff.up.weight": "ffn_up.weight", "ff.down.weight": "ffn_down.weight",
        "attn.q_norm.weight": "attn_q_norm.weight", "attn.k_norm.weight": "attn_k_norm.weight",
        "post_attn_norm.weight": "post_attention_norm.weight", "post_ff_norm.weight": "post_ffw_norm.weight",
        "ff.router.weight": "ffn_gate_inp.weight",
    }  # fmt: skip
    # llama.cpp's `llama` rotates neighbouring feature pairs (Meta's layout); its other architectures rotate
    # halves, as we do
    gguf_interleaved_rope: ClassVar[bool] = False

    def gguf_hparams(self, config) -> dict[str, Any]:
        if self.gguf_arch is None:
            return super().gguf_hparams(config)
        self.check_exportable(config)
        hp = {
            "context_length": config.context_length, "embedding_length": config.emb_dim,
            "block_count": config.n_layers, "feed_forward_length": config.hidden_dim,
            "attention.head_count": config.n_heads, "attention.head_count_kv": config.n_kv_heads,
            "attention.key_length": config.head_dim, "attention.value_length": config.head_dim,
            "attention.layer_norm_rms_epsilon": config.norm_eps, "rope.dimension_count": config.head_dim,
            "rope.freq_base": config.rope_base, "vocab_size": config.vocab_size,
        }  # fmt: skip
        scaling = config.rope_scaling or {}
        if scaling.get("rope_type") == "linear":
            hp.update({"rope.scaling.type": "linear", "rope.scaling.factor": scaling["factor"]})
        if config.sliding_window is not None:
            hp["attention.sliding_window"] = config.sliding_window
        if config.n_experts:
            hp.update({"expert_count": config.n_experts, "expert_used_count": config.n_experts_active,
                       "expert_feed_forward_length": config.expert_hidden_dim})  # fmt: skip
        return hp

    def gguf_tensors(self, sd: Tensors, config) -> Tensors:
        import torch

        if self.gguf_arch is None:
            return super().gguf_tensors(sd, config)
        q_size, kv_size = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        out: Tensors = {"token_embd.weight": sd["tok_emb.weight"]}
        for i in range(config.n_layers):
            b, g = f"blocks.{i}.", f"blk.{i}."
            q, k, v = sd[b + "attn.qkv.weight"].split([q_size, kv_size, kv_size])
            if self.gguf_interleaved_rope:
                q, k = _interleave_rope(q, config.n_heads), _interleave_rope(k, config.n_kv_heads)
            out.update({g + "attn_q.weight": q, g + "attn_k.weight": k, g + "attn_v.weight": v})
            if b + "ff.gate_up" in sd:  # experts: (E, 2H, d) gate|up, (E, d, H) down
                gate, up = sd[b + "ff.gate_up"].chunk(2, dim=1)
                out.update({g + "ffn_gate_exps.weight": gate, g + "ffn_up_exps.weight": up,
                            g + "ffn_down_exps.weight": sd[b + "ff.down"]})  # fmt: skip
            for name, tensor in sd.items():
                if not name.startswith(b) or name[len(b) :] in ("attn.qkv.weight", "ff.gate_up", "ff.down"):
                    continue
                theirs = self.gguf_pairs.get(name[len(b) :])
                if theirs is None:
                    raise ScratchLLMError(f"convert --to gguf: llama.cpp's {self.gguf_arch} has no tensor for {name!r}")
                out[g + theirs] = tensor
        out["output_norm.weight"] = sd["final_norm.weight"]
        if not config.tie_embeddings:  # llama.cpp reuses token_embd when `output` is absent
            out["output.weight"] = sd["out_head.weight"]
        scaling = config.rope_scaling or {}
        if scaling.get("rope_type") == "llama3":  # llama.cpp divides each frequency by its factor
            from scratchllm.models.rope import inverse_frequencies, llama3_scaled_frequencies

            plain = inverse_frequencies(config.head_dim, config.rope_base)
            out["rope_freqs.weight"] = plain / llama3_scaled_frequencies(plain, scaling)
        if config.norm == "rmsnorm_offset":  # Gemma scales by (1 + w); llama.cpp by w
            out = {k: v + 1.0 if k.endswith("norm.weight") else v for k, v in out.items()}
        return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}

    # -- config.json fields every Llama-layout family shares --------------------------------------------------
    @staticmethod
    def common_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ScratchLLMError("config.json: variants with attention_bias/mlp_bias are not supported")
        return {
            "vocab_size": hf["vocab_size"], "context_length": hf["max_position_embeddings"],
            "emb_dim": hf["hidden_size"], "n_heads": hf["num_attention_heads"],
            "n_kv_heads": hf.get("num_key_value_heads") or hf["num_attention_heads"],
            "n_layers": hf["num_hidden_layers"], "head_dim": hf.get("head_dim"),
            "hidden_dim": hf["intermediate_size"], "norm_eps": hf.get("rms_norm_eps", 1e-6),
            "tie_embeddings": hf.get("tie_word_embeddings", False), **rope_from_hf(hf), **windows_from_hf(hf),
        }  # fmt: skip

    def common_to_hf(self, config) -> dict[str, Any]:
        self.check_exportable(config)
        if config.qkv_bias:
            raise ScratchLLMError(f"model {config.name!r} has qkv biases, which {self.hf_architecture} cannot hold")
        hf = {
            "architectures": [self.hf_architecture], "model_type": self.hf_model_types[0],
            "vocab_size": config.vocab_size, "max_position_embeddings": config.context_length,
            "hidden_size": config.emb_dim, "intermediate_size": config.hidden_dim,
            "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
            "num_hidden_layers": config.n_layers, "head_dim": config.head_dim, "rms_norm_eps": config.norm_eps,
            "hidden_act": "silu", "tie_word_embeddings": config.tie_embeddings,
            "attention_bias": False, "mlp_bias": False,
            # HF's Embedding(padding_idx) would freeze that row in training; ours trains every row
            "pad_token_id": None,
        }  # fmt: skip
        global_rope = {"rope_theta": config.rope_base, **_rope_scaling_to_hf(config.rope_scaling)}
        # transformers 5 reads rope_parameters; the older keys beside them keep 4.x readers right
        hf["rope_theta"] = config.rope_base
        if config.rope_scaling:
            hf["rope_scaling"] = global_rope
        if config.sliding_window is None:
            hf["rope_parameters"] = global_rope
        else:
            hf["rope_local_base_freq"] = config.rope_local_base or config.rope_base
            local = config.rope_local_base if config.rope_local_base is not None else config.rope_base
            hf["rope_parameters"] = {"full_attention": global_rope,
                                     "sliding_attention": {"rope_type": "default", "rope_theta": local}}  # fmt: skip
            hf["sliding_window"] = config.sliding_window
            hf["layer_types"] = ["full_attention" if config.window(i) is None else "sliding_attention"
                                 for i in range(config.n_layers)]  # fmt: skip
        return hf


def rope_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """`rope_base`, `rope_scaling` (of the global layers) and `rope_local_base` from either transformers 5's
    `rope_parameters` (one dict, or one per layer type) or the older `rope_theta` / `rope_scaling` /
    `rope_local_base_freq` keys."""
    params = dict(hf.get("rope_parameters") or {})
    local = None
    if "full_attention" in params or "sliding_attention" in params:
        local = params.get("sliding_attention")
        params = dict(params.get("full_attention") or {})
        if local and local.get("rope_type", "default") != "default":
            raise ScratchLLMError(f"config.json: rope scaling {local} of the sliding-window layers is not supported")
    scaling = hf.get("rope_scaling") or params
    base = float(hf.get("rope_theta", params.get("rope_theta", 10000.0)))
    local_base = (local or {}).get("rope_theta", hf.get("rope_local_base_freq"))
    return {"rope_base": base, "rope_scaling": rope_scaling_from_hf(scaling),
            "rope_local_base": None if local_base is None or float(local_base) == base else float(local_base)}


def windows_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """`sliding_window` and `global_every` from `layer_types` (every n-th layer global, the rest local)."""
    types = hf.get("layer_types")
    if types is None:
        pattern = hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern"))
        if not hf.get("sliding_window") or not pattern:
            return {}
        types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                 for i in range(hf["num_hidden_layers"])]  # fmt: skip
    local = [t == "sliding_attention" for t in types]
    if not any(local):
        return {}
    globals_ = [i for i, is_local in enumerate(local) if not is_local]
    every = globals_[0] + 1 if globals_ else None
    if any(is_local == (every is not None and (i + 1) % every == 0) for i, is_local in enumerate(local)):
        raise ScratchLLMError(f"config.json: layer_types {types} are not every n-th layer global")
    return {"sliding_window": hf["sliding_window"], "global_every": every}


def rope_scaling_from_hf(scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """HF's rope_scaling (or transformers 5's rope_parameters) -> ours; None for plain RoPE."""
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(scaling["factor"])}
    if kind != "llama3":
        raise ScratchLLMError(f"config.json: rope scaling {scaling} is not supported (only 'llama3' and 'linear')")
    return {
        "rope_type": "llama3", "factor": scaling["factor"], "low_freq_factor": scaling["low_freq_factor"],
        "high_freq_factor": scaling["high_freq_factor"],
        "original_context_length": scaling["original_max_position_embeddings"],
    }  # fmt: skip


def _rope_scaling_to_hf(s: dict[str, Any] | None) -> dict[str, Any]:
    if not s:
        return {"rope_type": "default"}
    if s["rope_type"] == "linear":
        return {"rope_type": "linear", "factor": s["factor"]}
    return {"rope_type": "llama3", "factor": s["factor"], "low_freq_factor": s["low_freq_factor"],
            "high_freq_factor": s["high_freq_factor"], "original_max_position_embeddings": s["original_context_length"]}


def _head_from_hf(sd: Tensors, config, used: set[str], out: Tensors) -> None:
    if config.tie_embeddings:
        used.add("lm_head.weight")  # a tied head may be saved or not; the embedding is what counts
        out["out_head.weight"] = out["tok_emb.weight"]
    else:
        out["out_head.weight"] = take(sd, "lm_head.weight", used)


def _check_unused(sd: Tensors, used: set[str], ignorable: tuple[str, ...] = ()) -> None:
    extra = sorted(k for k in sd if k not in used and not k.endswith(ignorable))
    if extra:
        raise ScratchLLMError(f"checkpoint has unexpected tensor {extra[0]!r} ({len(extra)} unexpected in all)")


def _interleave_rope(w, n_heads: int):
    """Rows of a q or k projection from rotate-half order (feature i pairs with i + d/2) to llama.cpp's
    neighbouring pairs (2i with 2i + 1), head by head."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _block_part(name: str) -> tuple[str, str]:
    """'blocks.3.attn.qkv' -> ('3', 'attn.qkv')."""
    if not name.startswith("blocks."):
        raise ScratchLLMError(f"PEFT export: no HuggingFace module for LoRA layer {name!r}")
    i, rest = name.split(".", 2)[1:]
    return i, rest
