"""Instruction fine-tuning (book ch. 7) and LoRA runs on the shared loop: the book's collate and split, a small
model that learns its training answers word for word, the saved prompt style, exact LoRA resume."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.data.instructions import book_split, collate, read_examples
from scratchllm.errors import ScratchLLMError
from scratchllm.generation.respond import respond
from scratchllm.prompts import STYLES
from scratchllm.training.config import InstructConfig
from scratchllm.training.instruct import finetune_instruct
from tests.conftest import shared_file

THINGS = ["apple", "sky", "grass", "sun", "grape", "carrot", "coal", "snow", "rose", "bear"]
COLORS = list(zip(THINGS, ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown"]))
WORDS = ["cat", "dog", "fish", "bird", "frog", "lion", "wolf", "duck", "goat", "deer"]


def test_collate_is_the_books():
    """The book's example (ch. 7.3): inputs [[0..4], [5, 6], [7, 8, 9]], pad 50256."""
    inputs, targets = collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], pad_id=50256)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]
    assert targets.tolist() == [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]]
    _, cut = collate([[0, 1, 2, 3, 4], [5, 6]], pad_id=50256, max_length=3)
    assert cut.tolist() == [[1, 2, 3], [6, 50256, -100]]
    _, masked = collate([[0, 1, 2, 3, 4], [5, 6]], pad_id=50256, prompt_lens=[3, 1])
    assert masked.tolist() == [[-100, -100, 3, 4, 50256], [6, 50256, -100, -100, -100]]  # prompt tokens ignored


def test_book_split_and_validation(tmp_path):
    examples = read_examples(shared_file("instruction-data.json"), STYLES["alpaca"])
    train, val, test = book_split(examples)
    assert (len(train), len(test), len(val)) == (935, 110, 55)
    assert test[0].record == examples[935].record  # file order, as the book
    assert examples[0].prompt.endswith("### Input:\nfreind --> friend\n\n### Response:\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": 3}\n')
    with pytest.raises(ScratchLLMError, match=r"bad.jsonl: record 1: field 'output' must be a string"):
        read_examples(bad, STYLES["alpaca"])
    bad.write_text('[{"instruction": "a"}]')
    with pytest.raises(ScratchLLMError, match=r"record 0: missing field 'output'"):
        read_examples(bad, STYLES["alpaca"])
    chat = tmp_path / "chat.jsonl"
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    chat.write_text(json.dumps({"messages": turns}))
    (ex,) = read_examples(chat, STYLES["chatml"])
    assert ex.prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" and ex.response == "Yo"


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    records = [{"instruction": f"What color is the {t}?", "input": "", "output": f"The {t} is {c}."} for t, c in COLORS]
    records += [{"instruction": "Repeat the word.", "input": w, "output": f"{w} {w}"} for w in WORDS]
    path = tmp_path_factory.mktemp("instruct") / "data.json"
    path.write_text(json.dumps(records))
    return path


def small_run(data_file, out_dir, **kw) -> InstructConfig:
    settings = dict(checkpoint="gpt-tiny", data=str(data_file), out_dir=str(out_dir), batch_size=4, epochs=None,
                    max_steps=300, lr=3e-3, min_lr=3e-4, eval_every=100, save_every=100, progress=False,
                    dtype="fp32", samples=0, response_tokens=16)  # fmt: skip
    return InstructConfig(**{**settings, **kw})


def test_a_small_model_learns_its_answers_and_keeps_its_style(data_file, tmp_path, capsys):
    from scratchllm.checkpoints.load import load_checkpoint
    from scratchllm.cli.main import main
    from scratchllm.generation.stream import end_of_text_ids

    result = finetune_instruct(small_run(data_file, tmp_path / "run", mask_prompt=True, max_steps=500, min_lr=2e-3,
                                      warmup_steps=10))  # copying the noun is learnt around step 300
    assert result.evals[-1]["train_loss"] < result.evals[0]["train_loss"] / 10
    run = tmp_path / "run"
    loaded = load_checkpoint(run, "fp32")
    assert loaded.prompt_style == "alpaca"
    examples = read_examples(data_file, STYLES["alpaca"])
    train = book_split(examples)[0]
    stop_ids = end_of_text_ids(loaded.tokenizer)
    answers = respond(loaded.model, loaded.tokenizer, [e.prompt for e in train[:8]], stop_ids,
                      STYLES["alpaca"].stop_strings, 16)
    assert answers == [ex.response for ex in train[:8]]
    saved = json.loads((run / "test-responses.json").read_text())
    assert [r["instruction"] for r in saved] == [ex.record["instruction"] for ex in book_split(examples)[2]]
    assert all(set(r) == {"instruction", "input", "output", "model_response"} for r in saved)
    # `generate` on the run formats the instruction with its style, without being told.
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(run), "--prompt", "What color is the sky?", "--dtype", "fp32"]) == 0
    assert capsys.readouterr().out.strip() == "The sky is blue."
    import subprocess
    import sys
    from pathlib import Path

    chat = subprocess.run([str(Path(sys.executable).with_name("scratchllm")), "chat", "--checkpoint", str(run),
                           "--dtype", "fp32", "--temperature", "0"], input="What color is the grass?\n",
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert chat.stdout.strip() == "The grass is green." and "alpaca" in chat.stderr  # its style, unasked
    out = tmp_path / "train-responses.json"
    assert main(["respond", "--checkpoint", str(run), "--data", str(data_file), "--split", "train", "--out", str(out),
                 "--dtype", "fp32", "--max-new-tokens", "16"]) == 0  # fmt: skip
    assert [r["model_response"] for r in json.loads(out.read_text())[:8]] == answers
    assert main(["respond", "--checkpoint", str(run), "--data", str(data_file), "--out", str(out)]) == 2  # no overwrite
    # Exported, the style becomes the chat template: transformers renders exactly our prompt.
    assert main(["convert", "--to", "hf", str(run), str(tmp_path / "hf")]) == 0
    hf_tok = __import__("transformers").AutoTokenizer.from_pretrained(tmp_path / "hf")
    message = [{"role": "user", "content": "What color is the sky?"}]
    assert hf_tok.apply_chat_template(message, tokenize=False, add_generation_prompt=True) == train[1].prompt


@pytest.mark.parametrize("checkpoint,targets", [("gpt-tiny", "all"), ("qwen3-moe-tiny", "all,experts")])
def test_lora_run_resumes_bit_exactly_with_adapter_only_checkpoints(data_file, tmp_path, checkpoint, targets):
    """Also with adapters on a mixture of experts' stacked weights: checkpoints hold every adapter only."""
    from safetensors import safe_open

    from scratchllm.checkpoints.io import load_tensors

    kw = dict(lora=True, lora_rank=4, lora_alpha=8.0, lr=1e-2, max_steps=40, save_every=20, eval_every=20,
              checkpoint=checkpoint, lora_targets=targets)  # fmt: skip
    finetune_instruct(small_run(data_file, tmp_path / "full", **kw))

    class Stop(Exception):
        pass

    def interrupt(step: int) -> None:
        if step == 20:
            raise Stop

    with pytest.raises(Stop):
        finetune_instruct(small_run(data_file, tmp_path / "cut", **kw), on_step=interrupt)
    with safe_open(tmp_path / "cut" / "checkpoints" / "step-000020" / "model.safetensors", "pt") as f:
        names = list(f.keys())
    assert names and all(n.endswith((".lora_A", ".lora_B")) for n in names)  # no second copy of the base
    assert ("experts" in targets) == any("lora_gate_up" in n for n in names)
    finetune_instruct(small_run(data_file, tmp_path / "cut", **kw), resume=True)
    assert (tmp_path / "cut" / "peft-adapter" / "adapter_config.json").exists()
    full = load_tensors(tmp_path / "full" / "model.safetensors")
    resumed = load_tensors(tmp_path / "cut" / "model.safetensors")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def test_book_recipe_config_is_the_books_settings():
    from pathlib import Path

    from scratchllm.training.config import build_config

    cfg = build_config(Path(__file__).parents[1] / "configs" / "instruct-book.yaml", InstructConfig)
    assert (cfg.checkpoint, cfg.data, cfg.style, cfg.epochs, cfg.batch_size) == ("gpt2-medium", "book-instructions",
                                                                               "alpaca", 2, 8)  # fmt: skip
    assert (cfg.lr, cfg.min_lr, cfg.weight_decay, cfg.warmup_steps, cfg.mask_prompt) == (5e-5, 5e-5, 0.1, 0, False)
