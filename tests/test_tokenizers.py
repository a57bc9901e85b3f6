"""Tokenizers: the book's word tokenizer, GPT-2 BPE parity with tiktoken, vocab formats, errors."""

from __future__ import annotations

import json
import shutil

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizers import BPETokenizer, SimpleTokenizer, load_tokenizer
from scratchllm.tokenizers.formats import from_hf_tokenizer_json, from_openai_files, from_tiktoken_file
from scratchllm.tokenizers.simple import split_words

from .conftest import GPT2_BPE

VARIED = [
    "",
    "Hello, I am",
    "Every effort moves you",
    "Akwirw ier",
    "  leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\n\n\n   indented\n\tcode():",
    "naïve café — “quotes” ‘single’ … 日本語のテキスト 🤖🎉 emoji, Ελληνικά, עברית, русский",
    "numbers 1234567890 3.14159 -42 1e-5 0xFF",
    "It's they're we've I'm you'll he'd IT'S",
    "x" * 5000,
    "def f(a, b):\n    return a + b  # comment\n\n\nclass C:\n    pass\n",
    "\u200b zero\u00a0width and non-breaking spaces \ufeff",
    "a <|endoftext|> b",
    "IT'S It'S it's don't DON'T o'clock rock'n'roll '' 's 'll",
    "e\u0301 combining, \u00e9 precomposed, \U0001F468\u200d\U0001F469\u200d\U0001F467 family",
    "\U0001F44D\U0001F3FD skin tone",
    "trailing spaces then newline   \n   \n\n  x  \t\t y \u3000 z",
    "control \x00\x01\x7f bytes and \u2028 line \u2029 separators",
    "mixed123abc 1,000,000 12:30 v2.0.1 $5 100% #tag @user http://example.com/a?b=c&d=e",
    "<|endoftext|><|endoftext|>start and end<|endoftext|>",
]


def test_simple_tokenizer_book_figures(verdict_text):
    words = split_words(verdict_text)
    assert len(words) == 4690
    assert len(set(words)) == 1130
    tok = SimpleTokenizer.from_text(verdict_text)
    assert tok.vocab_size == 1132
    text = '"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    # The book's decode is lossy around quotes and apostrophes; this is its documented output.
    assert (
        tok.decode(tok.encode(text))
        == '" It\' s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    )
    ids = tok.encode("Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace.")
    # The book's V2 result: "Hello" and "palace" are not in the story and map to <|unk|> (1131).
    assert ids == [1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7]
    v1 = SimpleTokenizer.from_text(verdict_text, unk=False)
    with pytest.raises(ScratchLLMError, match="Hello"):
        v1.encode("Hello")


@pytest.fixture(scope="module")
def hf_gpt2():
    """HuggingFace `tokenizers` built from the same vocabulary files: its own regex engine and BPE code."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import ByteLevel

    hf = Tokenizer(BPE.from_file(str(GPT2_BPE / "encoder.json"), str(GPT2_BPE / "vocab.bpe")))
    hf.pre_tokenizer = ByteLevel(add_prefix_space=False)
    hf.add_special_tokens(["<|endoftext|>"])
    return hf


@pytest.mark.parametrize("text", VARIED)
def test_gpt2_matches_hf_tokenizers(gpt2_tokenizer, hf_gpt2, text):
    expected = hf_gpt2.encode(text).ids
    assert gpt2_tokenizer.encode(text, allowed_special={"<|endoftext|>"}) == expected
    assert gpt2_tokenizer.encode_reference(text, allowed_special={"<|endoftext|>"}) == expected
    assert gpt2_tokenizer.decode(expected) == text


def test_gpt2_book_examples(gpt2_tokenizer, tiktoken_gpt2, verdict_text):
    assert gpt2_tokenizer.vocab_size == 50257
    assert gpt2_tokenizer.encode("Hello, I am") == [15496, 11, 314, 716]
    assert gpt2_tokenizer.encode("Akwirw ier") == [33901, 86, 343, 86, 220, 959]
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
    assert gpt2_tokenizer.encode(text, allowed_special={"<|endoftext|>"}) == [
        15496,
        11,
        466,
        345,
        588,
        8887,
        30,
        220,
        50256,
        554,
        262,
        4252,
        18250,
        8812,
        2114,
        286,
        617,
        34680,
        27271,
        13,
    ]
    ids = gpt2_tokenizer.encode(verdict_text)
    assert len(ids) == 5145
    assert ids == tiktoken_gpt2.encode(verdict_text)
    assert gpt2_tokenizer.encode_reference(verdict_text) == ids


def test_special_token_errors(gpt2_tokenizer):
    with pytest.raises(ScratchLLMError, match="<\\|endoftext\\|>"):
        gpt2_tokenizer.encode("a <|endoftext|> b")
    with pytest.raises(ScratchLLMError, match="<\\|im_start\\|>"):
        gpt2_tokenizer.encode("a", allowed_special={"<|im_start|>"})
    # Treated as plain text when asked to.
    assert len(gpt2_tokenizer.encode_ordinary("<|endoftext|>")) > 1
    assert gpt2_tokenizer.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_encode_batch(gpt2_tokenizer, hf_gpt2, verdict_text):
    texts = [t for t in VARIED if "<|endoftext|>" not in t] + verdict_text.split("\n\n")[:40]
    expected = [e.ids for e in hf_gpt2.encode_batch(texts)]
    assert gpt2_tokenizer.encode_batch(texts) == expected
    assert [gpt2_tokenizer.encode(t) for t in texts] == expected


def test_hf_file_layouts_agree(tmp_path, gpt2_tokenizer, verdict_text):
    """HF's vocab.json/merges.txt and tokenizer.json (written by the `tokenizers` library) load the same."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import ByteLevel

    shutil.copy(GPT2_BPE / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(GPT2_BPE / "vocab.bpe", tmp_path / "merges.txt")
    from_pair = load_tokenizer(tmp_path)
    hf = Tokenizer(BPE.from_file(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")))
    hf.pre_tokenizer = ByteLevel(add_prefix_space=False)
    hf.add_special_tokens(["<|endoftext|>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    from_json = from_hf_tokenizer_json(tmp_path / "tokenizer.json")
    sample = verdict_text[:3000] + " <|endoftext|> ünïcödé 123"
    expected = gpt2_tokenizer.encode(sample, allowed_special="all")
    assert from_pair.encode(sample, allowed_special="all") == expected
    assert from_json.encode(sample, allowed_special="all") == expected
    assert hf.encode(sample).ids == expected


def test_save_load_roundtrip(tmp_path, gpt2_tokenizer, verdict_text):
    path = gpt2_tokenizer.save(tmp_path / "tok.json")
    loaded = BPETokenizer.load(path)
    assert loaded.fingerprint() == gpt2_tokenizer.fingerprint()
    assert loaded.encode(verdict_text) == gpt2_tokenizer.encode(verdict_text)
    assert load_tokenizer(path).vocab_size == 50257


def test_tiktoken_rank_file(tmp_path, gpt2_tokenizer):
    """Llama 3 ships its vocabulary as a tiktoken rank file; our reader handles that layout."""
    import base64

    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in sorted(gpt2_tokenizer.ranks.items(), key=lambda x: x[1])]
    (tmp_path / "tokenizer.model").write_text("\n".join(lines) + "\n")
    tok = from_tiktoken_file(tmp_path / "tokenizer.model")
    assert tok.vocab_size == 50256 + 256
    assert tok.special_tokens["<|begin_of_text|>"] == 50256
    assert tok.special_tokens["<|eot_id|>"] == 50256 + 9
    assert tok.decode(tok.encode("Hello world")) == "Hello world"


@pytest.mark.parametrize(
    "encoder,merges,match",
    [
        ("{not json", "#version: 0.2\n", "malformed JSON"),
        ('{"a": "x"}', "#version: 0.2\n", "integer ids"),
        (None, "#version: 0.2\nĠ t h\n", "two tokens"),
        (None, "#version: 0.2\nq z\n", "missing from the vocabulary"),
    ],
)
def test_malformed_vocab_files(tmp_path, encoder, merges, match):
    enc = tmp_path / "encoder.json"
    if encoder is None:
        shutil.copy(GPT2_BPE / "encoder.json", enc)
        vocab = json.loads(enc.read_text())
        vocab.pop("qz", None)
        enc.write_text(json.dumps(vocab))
    else:
        enc.write_text(encoder)
    (tmp_path / "vocab.bpe").write_text(merges)
    with pytest.raises(ScratchLLMError, match=match):
        from_openai_files(enc, tmp_path / "vocab.bpe")


def test_missing_and_wrong_tokenizer_paths(tmp_path):
    with pytest.raises(ScratchLLMError, match="no such file"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(ScratchLLMError, match="no tokenizer found"):
        load_tokenizer(tmp_path)
    (tmp_path / "x.json").write_text('{"format": "scratchllm-bpe", "tokens": 3}')
    with pytest.raises(ScratchLLMError, match="malformed"):
        BPETokenizer.load(tmp_path / "x.json")


def test_gpt2_vocabulary_and_the_verdict_ship_with_the_package(gpt2_tokenizer, verdict_text):
    from scratchllm.data.corpus import corpus_files, read_text

    shipped = load_tokenizer("gpt2")  # no download, no ../shared
    assert shipped.fingerprint() == gpt2_tokenizer.fingerprint() and shipped.name == "gpt2"
    (story,) = corpus_files("the-verdict")
    assert read_text(story) == verdict_text


def test_qwen_style_tokenizer_json_gives_hf_ids(tmp_path, verdict_text):
    """A Qwen-style tokenizer.json (NFC normaliser, Split regex + ByteLevel, specials after the vocabulary) built
    offline with HF `tokenizers`: our loader encodes every hard text to the same ids, and writes it back so
    `tokenizers` reads our export with the same ids again."""
    from tokenizers import Tokenizer

    from scratchllm.tokenizers.formats import to_hf_tokenizer_json
    from tests.hf_families import qwen_style_tokenizer

    hf = qwen_style_tokenizer([verdict_text, *VARIED] * 3, 1200)
    hf.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path)
    assert ours.normalization == "NFC" and ours.special_tokens["<|im_end|>"] == hf.token_to_id("<|im_end|>")
    hard = [*VARIED, "<|im_start|>user\n12345 + 678 = ?<|im_end|>\n<think>\n\n</think>", "Cafe\u0301 vs Caf\u00e9"]
    for text in hard:
        expected = hf.encode(text).ids
        assert ours.encode(text, allowed_special="all") == expected, text
        assert ours.encode_reference(text, allowed_special="all") == expected, text
    assert ours.encode("Cafe\u0301") == ours.encode("Caf\u00e9")  # normalised, as Qwen's
    assert ours.encode("2024") == [ours.encode(d)[0] for d in "2024"]  # digits one by one
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "tokenizer.json").write_text(json.dumps(to_hf_tokenizer_json(ours)))
    back = Tokenizer.from_file(str(tmp_path / "ours" / "tokenizer.json"))
    for text in hard:
        assert back.encode(text).ids == hf.encode(text).ids, text
    ours.save(tmp_path / "saved.json")
    assert BPETokenizer.load(tmp_path / "saved.json").encode("Cafe\u0301") == ours.encode("Caf\u00e9")


def test_gemma_style_sentencepiece_gives_hf_ids(tmp_path, verdict_text):
    """A Gemma-style SentencePiece model (byte fallback, split digits, no dummy prefix) built offline: our ids
    equal transformers' GemmaTokenizer (its own conversion to HF tokenizers) on hard text, turn markers and
    <bos> are single special ids, and bytes outside the vocabulary fall back to byte pieces that decode back."""
    import transformers

    from scratchllm.prompts import STYLES
    from tests.hf_families import gemma_style_sentencepiece

    model = gemma_style_sentencepiece(verdict_text.split("\n") * 2 + VARIED[:8], tmp_path / "gemma", 700)
    ours = load_tokenizer(tmp_path / "gemma")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "gemma")
    assert {"<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"} <= set(ours.special_tokens)
    for text in [t for t in VARIED if "<|endoftext|>" not in t]:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False), text
        assert ours.decode(ours.encode(text)) == text
    chat = STYLES["gemma"].render([{"role": "user", "content": "12345 + 日本 🤖?"}])
    ids = ours.encode(chat, allowed_special="all")
    assert ids[0] == ours.special_tokens["<bos>"] and ids.count(ours.special_tokens["<start_of_turn>"]) == 2
    assert ids[1:] == hf.encode(chat.removeprefix("<bos>"), add_special_tokens=False)
    assert ours.encode("<bos>") != [ours.special_tokens["<bos>"]]  # as text unless allowed
    # A hub folder ships HF's converted tokenizer.json beside tokenizer.model: the SentencePiece model is read.
    hf.save_pretrained(tmp_path / "hub")
    shutil.copy(model, tmp_path / "hub" / "tokenizer.model")
    assert (tmp_path / "hub" / "tokenizer.json").exists()
    from_hub = load_tokenizer(tmp_path / "hub")
    assert type(from_hub).__name__ == "SentencePieceTokenizer" and from_hub.encode(VARIED[6]) == ours.encode(VARIED[6])
