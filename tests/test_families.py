"""Every family end to end from a HuggingFace folder, as a user with the hub would start: a LoRA instruction
fine-tune that learns its answers, the adapter loaded by `peft` on the transformers model, the merged export
loaded by transformers, and the run served and answered through the `openai` client.

GPT-2's full fine-tune is held to the same in tests/test_instruct.py; here each later family starts from a
random transformers model saved with a tokenizer of its kind built offline (Qwen-style tokenizer.json, Gemma-style
tokenizer.model), whose chat markers are real special tokens.
"""

from __future__ import annotations

import json

import openai
import peft
import pytest
import torch
import transformers

from scratchllm.checkpoints.load import load_checkpoint
from scratchllm.cli.main import main
from scratchllm.data.instructions import book_split, read_examples
from scratchllm.generation.engine import Engine
from scratchllm.generation.respond import respond
from scratchllm.generation.stream import end_of_text_ids
from scratchllm.prompts import STYLES
from scratchllm.serving.app import Settings
from scratchllm.tokenizers.formats import load_tokenizer
from scratchllm.training.instruct import finetune_instruct
from tests.hf_families import gemma_style_sentencepiece, hf_model, qwen_style_tokenizer
from tests.serving_helpers import ServerThread
from tests.test_instruct import COLORS, small_run

RECORDS = [{"instruction": f"What color is the {t}?", "input": "", "output": f"The {t} is {c}."} for t, c in COLORS]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("families") / "colors.json"
    path.write_text(json.dumps(RECORDS))
    return path


def _base_folder(arch: str, folder, style: str) -> None:
    """A random transformers model of `arch` saved with a tokenizer of its family's kind, as the hub has them."""
    texts = [STYLES[style].render([{"role": "user", "content": r["instruction"]}]) + r["output"] for r in RECORDS]
    if arch == "gemma3":
        gemma_style_sentencepiece(texts * 4, folder, 500)
        vocab = load_tokenizer(folder).vocab_size
    else:
        tokenizer = qwen_style_tokenizer(texts * 4, 400)
        vocab = tokenizer.get_vocab_size()
    model = hf_model(arch, vocab_size=vocab, max_position_embeddings=128)
    model.save_pretrained(folder)
    if arch != "gemma3":
        tokenizer.save(str(folder / "tokenizer.json"))


# (family, its chat style): Gemma with a SentencePiece tokenizer.model, the others with a byte-level tokenizer.json
CASES = [("qwen3", "qwen3"), ("qwen3_moe", "qwen3"), ("gemma3", "gemma"), ("olmo3", "chatml")]


@pytest.mark.parametrize("arch,style", CASES)
def test_family_lora_fine_tune_exports_and_serves(arch, style, data_file, tmp_path):
    _base_folder(arch, tmp_path / "base", style)
    run = tmp_path / "run"
    result = finetune_instruct(small_run(data_file, run, checkpoint=str(tmp_path / "base"), style=style, lora=True,
                                         lora_rank=32, lora_alpha=64, mask_prompt=True, max_steps=800, lr=5e-3,
                                         min_lr=5e-3 / 3, warmup_steps=10, eval_every=800,
                                         response_tokens=32))  # fmt: skip
    assert result.evals[-1]["train_loss"] < result.evals[0]["train_loss"] / 10
    loaded = load_checkpoint(run, "fp32")
    assert loaded.prompt_style == style and loaded.model.config.arch == arch
    train = book_split(read_examples(data_file, STYLES[style]))[0]
    stop_ids = end_of_text_ids(loaded.tokenizer)
    end_of_turn = "<end_of_turn>" if arch == "gemma3" else "<|im_end|>"
    assert loaded.tokenizer.special_tokens[end_of_turn] in stop_ids
    answers = respond(loaded.model, loaded.tokenizer, [e.prompt for e in train], stop_ids, STYLES[style].stop_strings,
                      32)
    assert answers == [ex.response for ex in train]

    # The run's PEFT adapter on the transformers base, and the merged HF export, give our logits.
    idx = torch.tensor([loaded.tokenizer.encode(train[0].prompt, allowed_special="all")])
    with torch.no_grad():
        ours = loaded.model(idx)
        base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
        adapted = peft.PeftModel.from_pretrained(base, run / "peft-adapter").eval()
        torch.testing.assert_close(adapted(idx).logits, ours, atol=1e-4, rtol=1e-4)
        assert main(["convert", "--to", "hf", str(run), str(tmp_path / "hf")]) == 0
        merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        torch.testing.assert_close(merged(idx).logits, ours, atol=1e-4, rtol=1e-4)
    assert type(merged).__name__ == type(base).__name__  # Qwen3ForCausalLM, Gemma3ForCausalLM, ...
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")  # with its chat template
    message = [{"role": "user", "content": train[0].record["instruction"]}]
    assert hf_tok.apply_chat_template(message, tokenize=False, add_generation_prompt=True) == train[0].prompt

    # Served in its style, the openai client gets the trained answers.
    engine = Engine(loaded.model, loaded.tokenizer, max_batch=4)
    with ServerThread(engine, Settings("run", STYLES[style])) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
        for ex in train[:3]:
            reply = client.chat.completions.create(model="run", temperature=0, max_tokens=32, messages=[
                {"role": "user", "content": ex.record["instruction"]}])  # fmt: skip
            assert reply.choices[0].message.content == ex.response
            assert reply.choices[0].finish_reason == "stop"
        if style == "qwen3":  # the thinking switch, as vLLM takes it; a template argument we lack is a 400
            message = [{"role": "user", "content": train[0].record["instruction"]}]
            direct = client.chat.completions.create(model="run", max_tokens=1, messages=message,
                                                    extra_body={"chat_template_kwargs": {"enable_thinking": False}})
            prompt = STYLES["qwen3"].render(message, thinking=False)
            assert direct.usage.prompt_tokens == len(loaded.tokenizer.encode(prompt, allowed_special="all"))
            with pytest.raises(openai.BadRequestError, match="tools"):
                client.chat.completions.create(model="run", max_tokens=1, messages=message,
                                               extra_body={"chat_template_kwargs": {"tools": []}})
