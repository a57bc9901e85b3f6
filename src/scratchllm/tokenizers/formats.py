"""Reading vocabularies written by others into a `BPETokenizer`.

Supported: OpenAI's GPT-2 `encoder.json` + `vocab.bpe`, HuggingFace's `vocab.json` + `merges.txt`
(the same two files renamed), HuggingFace's single `tokenizer.json`, and tiktoken's base64 rank files
(Llama 3's `tokenizer.model`). Our own `scratchllm-tokenizer.json` is read by `BPETokenizer.load`.

GPT-2's files store tokens as printable unicode strings: each byte is mapped to a visible character
(`bytes_to_unicode`) so that the vocabulary survives JSON. We undo that mapping to get raw token bytes.
When both a vocabulary and a merges list are given, we check that the vocabulary's ids are ranks that
agree with the merges; a file that fails that check is reported, never silently mis-tokenized.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.files import read_json
from scratchllm.tokenizers.bpe import END_OF_TEXT, GPT2_PATTERN, BPETokenizer

OUR_FILE = "scratchllm-tokenizer.json"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to themselves)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _unicode_to_bytes(token: str, where: str) -> bytes:
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    try:
        return bytes(decoder[c] for c in token)
    except KeyError:
        raise ScratchLLMError(f"{where}: token {token!r} is not in GPT-2's byte-level alphabet") from None


def _read_merges(path: Path) -> list[tuple[str, str]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ScratchLLMError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise ScratchLLMError(f"{path}: not UTF-8 text ({e})") from None
    merges = []
    for lineno, line in enumerate(lines, 1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ScratchLLMError(f"{path}:{lineno}: expected two tokens separated by one space, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _from_vocab_and_merges(
    vocab: dict, merges: list[tuple[str, str]], specials: dict[str, int], pattern: str, name: str, where: str
) -> BPETokenizer:
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ScratchLLMError(f"{where}: vocabulary should map token strings to integer ids")
    ranks = {_unicode_to_bytes(tok, where): i for tok, i in vocab.items() if tok not in specials}
    # Ranks must replay the merges: byte tokens first, then each merge's result in order.
    previous = -1
    for a, b in merges:
        merged = _unicode_to_bytes(a + b, where)
        rank = ranks.get(merged)
        if rank is None:
            raise ScratchLLMError(f"{where}: merge {a!r} + {b!r} produces a token missing from the vocabulary")
        if rank < previous:  # equal: several merges may spell the same token
            raise ScratchLLMError(f"{where}: vocabulary ids are not in merge order at {a!r} + {b!r}")
        previous = rank
    return BPETokenizer(ranks, specials, pattern, name)


def from_openai_files(encoder_json: str | Path, vocab_bpe: str | Path, name: str = "gpt2") -> BPETokenizer:
    """GPT-2 as OpenAI published it (`encoder.json`, `vocab.bpe`); HF's `vocab.json`/`merges.txt` too."""
    vocab = read_json(Path(encoder_json))
    specials = {END_OF_TEXT: vocab[END_OF_TEXT]} if isinstance(vocab, dict) and END_OF_TEXT in vocab else {}
    return _from_vocab_and_merges(vocab, _read_merges(Path(vocab_bpe)), specials, GPT2_PATTERN, name, str(encoder_json))


def from_hf_tokenizer_json(path: str | Path, name: str | None = None) -> BPETokenizer:
    """HuggingFace `tokenizer.json` with a byte-level BPE model (GPT-2, Llama 3, our exports)."""
    path = Path(path)
    data = read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise ScratchLLMError(f"{path}: field 'model.type' should be 'BPE' for a byte-level BPE tokenizer")
    if model.get("byte_fallback"):  # SentencePiece's BPE converted by HF (Gemma, Llama 2): read tokenizer.model
        raise ScratchLLMError(f"{path}: a SentencePiece-style BPE (byte_fallback); its tokenizer.model is what we read")
    specials = {t["content"]: t["id"] for t in data.get("added_tokens", []) if t.get("special", True)}
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    tokenizer = _from_vocab_and_merges(
        model.get("vocab"), merges, specials, _hf_pattern(data, path), name or path.parent.name, str(path)
    )
    tokenizer.normalization = _hf_normalization(data, path)
    return tokenizer


def _hf_normalization(data: dict, path: Path) -> str | None:
    """None or "NFC" (Qwen's tokenizers); any other normaliser would change ids we cannot reproduce."""
    norm = data.get("normalizer")
    steps = norm.get("normalizers", []) if isinstance(norm, dict) and norm.get("type") == "Sequence" else [norm]
    kinds = [s.get("type") if isinstance(s, dict) else s for s in steps if s is not None]
    if not kinds:
        return None
    if kinds == ["NFC"]:
        return "NFC"
    raise ScratchLLMError(f"{path}: field 'normalizer' {norm} is not supported (only none or NFC)")


def _hf_pattern(data: dict, path: Path) -> str:
    """The pre-tokenizer regex: GPT-2's for a plain ByteLevel, the explicit one for a Split step."""
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in steps:
        if step.get("type") == "Split" and "Regex" in (step.get("pattern") or {}):
            return step["pattern"]["Regex"]
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return GPT2_PATTERN
    raise ScratchLLMError(f"{path}: field 'pre_tokenizer' is not a byte-level regex split we understand")


# Llama 3's pre-tokenizer (the GPT-4 pattern with a 1-3 digit rule) and its 256 reserved special tokens.
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
]  # fmt: skip


def from_tiktoken_file(path: str | Path, name: str | None = None) -> BPETokenizer:
    """A tiktoken rank file (`base64-token rank` per line), e.g. Llama 3's `tokenizer.model`."""
    path = Path(path)
    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise ScratchLLMError(f"{path}: cannot read ({e})") from None
    for lineno, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise ScratchLLMError(f"{path}:{lineno}: expected 'base64-token rank', got {line[:60]!r}") from None
    n = len(ranks)
    names = LLAMA3_SPECIALS + [f"<|reserved_special_token_{i}|>" for i in range(3, 256 - len(LLAMA3_SPECIALS) + 3)]
    specials = {tok: n + i for i, tok in enumerate(names[:256])}
    return BPETokenizer(ranks, specials, LLAMA3_PATTERN, name or path.parent.name)


def save_tokenizer(tokenizer, folder: str | Path) -> Path:
    """Write `tokenizer` into a model or run folder under the name `load_tokenizer` finds it by: our BPE file,
    or a SentencePiece model's own `tokenizer.model`."""
    return tokenizer.save(Path(folder) / (OUR_FILE if isinstance(tokenizer, BPETokenizer) else "tokenizer.model"))


def load_tokenizer(spec: str | Path) -> BPETokenizer:
    """Load a tokenizer from a file, a folder holding one, or the name `gpt2` (shipped with the package).

    Folders are searched in order: our own file, HF `tokenizer.json`, `vocab.json`+`merges.txt`,
    `encoder.json`+`vocab.bpe`, tiktoken-format `tokenizer.model`.
    """
    path = Path(spec)
    if not path.exists():
        if str(spec) == "gpt2":
            from scratchllm.assets import GPT2_TOKENIZER

            return load_tokenizer(GPT2_TOKENIZER)
        raise ScratchLLMError(f"tokenizer {spec!r}: no such file or folder (or use the name 'gpt2')")
    if path.is_file():
        if path.name.endswith(".model"):
            from scratchllm.tokenizers.sentencepiece import SentencePieceTokenizer, is_sentencepiece_file

            if is_sentencepiece_file(path):
                return SentencePieceTokenizer(path)
            return from_tiktoken_file(path)
        head = path.read_bytes()[:200]
        if b'"format"' in head and b"scratchllm-bpe" in head:
            return BPETokenizer.load(path)
        return from_hf_tokenizer_json(path)
    first_error = None
    for files, loader in (
        ((OUR_FILE,), BPETokenizer.load),
        (("tokenizer.json",), from_hf_tokenizer_json),
        (("vocab.json", "merges.txt"), lambda a, b: from_openai_files(a, b, name=path.name)),
        (("encoder.json", "vocab.bpe"), lambda a, b: from_openai_files(a, b, name=path.name)),
        (("tokenizer.model",), load_tokenizer),
    ):
        if all((path / f).exists() for f in files):
            # Llama 2's HF folder has a SentencePiece tokenizer.json we cannot read but also tokenizer.model.
            try:
                return loader(*(path / f for f in files))
            except ScratchLLMError as e:
                first_error = first_error or e
    if first_error is not None:
        raise first_error
    raise ScratchLLMError(
        f"{path}: no tokenizer found (expected {OUR_FILE}, tokenizer.json, vocab.json+merges.txt, "
        "encoder.json+vocab.bpe or tokenizer.model)"
    )


def byte_level_text(token: bytes) -> str:
    """A token's bytes as GPT-2's printable characters: how tokenizer.json and GGUF files store it."""
    to_unicode = bytes_to_unicode()
    return "".join(to_unicode[b] for b in token)


def bpe_merges(tokenizer: BPETokenizer) -> list[tuple[bytes, bytes]]:
    """A merges list that encodes exactly like our rank rule, for readers that apply merges by priority
    (HF `tokenizers`, llama.cpp).

    Every way of splitting a token into two vocabulary tokens is listed, ordered by the merged token's rank:
    the lowest-rank token that can form is always formed first, which is precisely the rank rule.
    """
    ranks = tokenizer.ranks
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        splits = [(token[:i], token[i:]) for i in range(1, len(token))]
        splits = [(a, b) for a, b in splits if a in ranks and b in ranks]
        splits.sort(key=lambda ab: (ranks[ab[0]], ranks[ab[1]]))
        merges.extend(splits)
    return merges


def to_hf_tokenizer_json(tokenizer: BPETokenizer) -> dict:
    """A HuggingFace `tokenizer.json` that encodes exactly like `tokenizer` (for `convert --to hf`)."""
    text = byte_level_text
    merges = [[text(a), text(b)] for a, b in bpe_merges(tokenizer)]
    flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    specials = [
        {"id": i, "content": s, **flags} for s, i in sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": specials,
        "normalizer": {"type": tokenizer.normalization} if tokenizer.normalization else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {text(t): r for t, r in tokenizer.ranks.items()}, "merges": merges},
    }  # fmt: skip
