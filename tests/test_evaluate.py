"""Perplexity: one window equals exp(the training loss); a sliding window equals transformers' own loss."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

from scratchllm.evaluation.perplexity import perplexity, windows
from scratchllm.models import build_model
from scratchllm.training.loss import lm_loss


def test_every_token_is_scored_once():
    for n, context, stride in ((10, 4, 4), (10, 4, 2), (50, 8, 3), (5, 8, 8)):
        targets = []
        for begin, end, first in windows(n, context, stride):
            targets += [j for j in range(begin + 1, end + 1) if j >= first]
        assert targets == list(range(1, n)), (n, context, stride)


def test_one_window_is_exp_of_the_training_loss():
    torch.manual_seed(0)
    model = build_model("gpt-tiny").eval()
    ids = torch.randint(0, 512, (65,))
    result = perplexity(model, ids.tolist(), n_bytes=100)
    with torch.no_grad():
        loss = lm_loss(model, ids[None, :-1], ids[None, 1:]).item()
    assert result.windows == 1 and result.tokens == 64
    assert result.perplexity == pytest.approx(math.exp(loss), rel=1e-4)
    assert result.bits_per_byte == pytest.approx(loss * 64 / math.log(2) / 100, rel=1e-6)



@pytest.mark.parametrize("stride", [16, 32])
def test_sliding_window_agrees_with_transformers(stride, device):
    from scratchllm.checkpoints.hf import config_from_hf, state_dict_from_hf
    from scratchllm.models import Transformer

    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=32, vocab_size=300,
                                     initializer_range=0.25)  # fmt: skip
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    config = config_from_hf(hf.config.to_dict())
    ours = Transformer(config).eval()
    ours.load_state_dict(state_dict_from_hf(hf.state_dict(), config))
    ours, hf = ours.to(device), hf.to(device)
    ids = torch.randint(0, 300, (150,), generator=torch.Generator().manual_seed(1)).to(device)
    result = perplexity(ours, ids.tolist(), n_bytes=600, context=32, stride=stride, batch_size=3)
    nats, count = 0.0, 0
    with torch.no_grad():
        for begin, end, first in windows(150, 32, stride):
            targets = ids[begin + 1 : end + 1].clone()[None]
            targets[0, : max(first - begin - 1, 0)] = -100
            n = int((targets != -100).sum())
            logits = hf(ids[begin:end][None]).logits
            # transformers' own causal-LM loss, given already-shifted targets
            nats += hf.loss_function(logits, None, vocab_size=300, shift_labels=targets).item() * n
            count += n
    assert result.tokens == count == 149
    assert result.perplexity == pytest.approx(math.exp(nats / count), rel=1e-4)


def test_evaluate_cli(tmp_path, capsys):
    from scratchllm.checkpoints.io import save_model
    from scratchllm.cli.main import main
    from scratchllm.tokenizers.formats import from_openai_files
    from tests.conftest import GPT2_BPE, VERDICT

    torch.manual_seed(0)
    save_model(build_model("gpt-tiny", vocab_size=50257), tmp_path / "m")
    tokenizer = from_openai_files(GPT2_BPE / "encoder.json", GPT2_BPE / "vocab.bpe")
    tokenizer.save(tmp_path / "m" / "scratchllm-tokenizer.json")
    assert main(["evaluate", "perplexity", "--checkpoint", str(tmp_path / "m"), "--data", str(VERDICT), "--json",
                 "--stride", "32"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["tokens"] == 5144 and 40_000 < out["perplexity"] < 60_000  # random weights: about the vocabulary size
    assert main(["evaluate", "perplexity", "--checkpoint", str(tmp_path / "m"), "--data", str(VERDICT),
                 "--stride", "100"]) == 2  # fmt: skip
    assert "--stride must be between 1 and the context 64" in capsys.readouterr().err
    for flag, message in (("--stride", "--stride must be between 1"), ("--context", "--context must be between 1")):
        assert main(["evaluate", "perplexity", "--checkpoint", str(tmp_path / "m"), "--data", str(VERDICT), flag,
                     "0"]) == 2  # 0 is refused, not taken as the default  # fmt: skip
        assert message in capsys.readouterr().err


def test_bits_per_byte_counts_utf8_bytes(tmp_path, capsys):
    """A non-ASCII text: bits per byte = total nats / ln 2 / its UTF-8 bytes (not its characters)."""
    from scratchllm.checkpoints.io import save_model
    from scratchllm.cli.main import main
    from scratchllm.tokenizers.formats import from_openai_files
    from tests.conftest import GPT2_BPE

    torch.manual_seed(0)
    save_model(build_model("gpt-tiny", vocab_size=50257), tmp_path / "m")
    tokenizer = from_openai_files(GPT2_BPE / "encoder.json", GPT2_BPE / "vocab.bpe")
    tokenizer.save(tmp_path / "m" / "scratchllm-tokenizer.json")
    text = "Grüße aus Zürich! 日本語のテキストと絵文字 🤖🎉 — naïve café. " * 4
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    assert main(["evaluate", "perplexity", "--checkpoint", str(tmp_path / "m"), "--data", str(tmp_path / "t.txt"),
                 "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    n_bytes = len(text.encode("utf-8"))
    assert n_bytes > len(text) + 100 and out["bytes"] == n_bytes
    assert out["bits_per_byte"] == pytest.approx(out["loss"] * out["tokens"] / math.log(2) / n_bytes, rel=1e-9)
