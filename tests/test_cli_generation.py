"""`generate`, `chat` and `bench` verbs on a small saved model folder with the GPT-2 tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from scratchllm.checkpoints.io import load_model_folder, save_model
from scratchllm.cli.main import main
from scratchllm.generation.chat import Conversation, pick_template
from scratchllm.generation.generate import GenerationConfig, generate
from scratchllm.models import build_model
from scratchllm.prompts import STYLES


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, gpt2_tokenizer):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = build_model("gpt-tiny", vocab_size=50257, context_length=128, tie_embeddings=True)
    save_model(model, folder)
    gpt2_tokenizer.save(folder / "scratchllm-tokenizer.json")
    return folder


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
def test_saved_folder_roundtrip(tmp_path, preset):
    """The model that was saved and the model that is loaded back: same config, weights, tying and logits."""
    torch.manual_seed(3)
    saved = build_model(preset, tie_embeddings=True).eval()
    with torch.no_grad():
        for p in saved.parameters():  # not the init's values: norms and biases off their 1 / 0
            p.add_(0.1 * torch.randn_like(p))
    save_model(saved, tmp_path)
    loaded = load_model_folder(tmp_path)
    assert loaded.config == saved.config
    assert loaded.out_head.weight is loaded.tok_emb.weight
    expected, got = saved.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    idx = torch.randint(0, saved.config.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.equal(loaded(idx), saved(idx))


@pytest.mark.parametrize("compile", [[], ["--compile"]])
def test_generate_cli_greedy_matches_library(model_dir, gpt2_tokenizer, capsys, compile):
    args = ["generate", "--checkpoint", str(model_dir), "--prompt", "Every effort moves you", "--max-new-tokens",
            "12", "--dtype", "fp32", "--stats", *compile]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr()
    from scratchllm.generation.engine import Engine

    model = load_model_folder(model_dir)
    # The same weight layout / compiled step as the CLI: a random tiny model has near-ties that another
    # kernel's rounding can flip.
    engine = Engine(model, gpt2_tokenizer, compile=bool(compile))
    ids = gpt2_tokenizer.encode("Every effort moves you")
    cfg = GenerationConfig(max_new_tokens=12, stop_ids=(50256,))
    expected = generate(model, [ids], cfg, engine=engine).texts[0]
    assert out.out == "Every effort moves you" + expected + "\n"
    assert "decode" in out.err and "tokens/s" in out.err


@pytest.mark.parametrize(
    "extra,match",
    [(["--prompt", ""], "empty"), (["--prompt", "x", "--temperature", "-1"], "temperature"),
     (["--prompt", "x", "--top-p", "0"], "top_p"), (["--prompt", "x " * 200], "context length")],
)  # fmt: skip
def test_generate_cli_errors(model_dir, capsys, extra, match):
    assert main(["generate", "--checkpoint", str(model_dir), *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_generate_cli_unknown_checkpoint(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_chat_cli_session(model_dir):
    script = "hello there\n/reset\nsecond question\n/quit\n"
    cmd = [sys.executable, "-m", "scratchllm", "chat", "--checkpoint", str(model_dir), "--max-new-tokens", "5",
           "--dtype", "fp32", "--seed", "0"]  # fmt: skip
    result = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "conversation cleared" in result.stderr
    assert len(result.stdout.splitlines()) == 2  # one reply per question


def test_chat_templates_and_overflow(gpt2_tokenizer):
    conv = Conversation(STYLES["alpaca"])
    conv.turns += [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}]
    conv.turns.append({"role": "user", "content": "Another?"})
    text = STYLES["alpaca"].render(conv.messages())
    assert text.count("### Instruction:") == 2 and text.endswith("### Response:\n")
    long_ids = conv.prompt_ids(gpt2_tokenizer, context_length=45, reply_budget=10)
    assert len(long_ids) + 10 <= 45 and len(conv.turns) == 1  # the oldest pair was dropped
    llama = STYLES["llama3"].render([{"role": "user", "content": "Hi"}])
    assert llama.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert pick_template(None, gpt2_tokenizer).name == "plain"


@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_generate_cli_quantized(model_dir, bits, capsys):
    args = ["generate", "--checkpoint", str(model_dir), "--prompt", "Hello", "--max-new-tokens", "5", "--quantize",
            bits, "--dtype", "bf16"]  # fmt: skip
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("Hello")


def test_bench_cli_json(capsys):
    assert main(["bench", "--checkpoint", "gpt-tiny", "--prompt-lengths", "8,16", "--batch-sizes", "1,2",
                 "--new-tokens", "8", "--dtype", "fp32"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(summary["results"]) == 4
    for row in summary["results"]:
        assert row["decode_tokens_per_s"] > 0 and row["ttft_ms"] > 0 and 0 < row["bandwidth_utilisation"]


def test_bench_cli_compile(capsys):
    assert main(["bench", "--checkpoint", "gpt-tiny", "--prompt-lengths", "8", "--batch-sizes", "1",
                 "--new-tokens", "6", "--dtype", "fp32", "--compile"]) == 0  # fmt: skip
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["dtype"] == "float32+compiled" and summary["results"][0]["decode_tokens_per_s"] > 0
    assert "--compile" in out.err
