"""Prompt styles: the exact strings (the book's Alpaca layout, Meta's Llama 3 headers), and HF chat templates
that make transformers' `apply_chat_template` produce exactly our prompt."""

from __future__ import annotations

import pytest
import transformers

from scratchllm.errors import ScratchLLMError
from scratchllm.prompts import STYLES, get_style

TURNS = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."},
         {"role": "user", "content": "Another?"}]  # fmt: skip
SYSTEM = [{"role": "system", "content": "Be brief."}]


def test_exact_strings():
    assert STYLES["alpaca"].render(TURNS) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nName a color.\n\n### Response:\nBlue."
        "\n\n### Instruction:\nAnother?\n\n### Response:\n"
    )
    assert STYLES["llama3"].render(SYSTEM + TURNS) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nName a color.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nBlue.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnother?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert STYLES["plain"].render(SYSTEM + TURNS) == (
        "System: Be brief.\nUser: Name a color.\nAssistant: Blue.\nUser: Another?\nAssistant:"
    )
    assert STYLES["chatml"].render(SYSTEM + TURNS[:1]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_instruction_records_as_the_book_formats_them():
    """The book's `format_input` + "\\n\\n### Response:\\n" (ch. 7.2), with and without an input."""
    alpaca = STYLES["alpaca"]
    assert alpaca.format_instruction("Identify the correct spelling.", "Ocassion") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nIdentify the correct spelling.\n\n### Input:\nOcassion\n\n### Response:\n"
    )
    assert alpaca.format_instruction("Name a color.") == alpaca.render([{"role": "user", "content": "Name a color."}])
    # The book's exercise 7.1 (Phi-3 style): the input on its own line under the instruction.
    assert STYLES["phi3"].format_instruction("Identify the correct spelling.", "Ocassion") == (
        "<|user|>\nIdentify the correct spelling.\nOcassion\n<|assistant|>:\n"
    )
    with pytest.raises(ScratchLLMError, match="expected one of"):
        get_style("vicuna")
    with pytest.raises(ScratchLLMError, match="message 0"):
        alpaca.render([{"role": "robot", "content": "x"}])



@pytest.mark.parametrize("name", sorted(STYLES))
def test_hf_chat_template_gives_our_exact_prompt(name, gpt2_tokenizer, tmp_path):
    """Exported tokenizer_config.json's chat_template, applied by transformers, equals our render."""
    from scratchllm.checkpoints.convert import to_hf
    from scratchllm.models import build_model

    to_hf(build_model("gpt-tiny", vocab_size=50257), gpt2_tokenizer, tmp_path, prompt_style=STYLES[name])
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for messages in (TURNS[:1], SYSTEM + TURNS, TURNS):
        ours = STYLES[name].render(messages)
        theirs = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert theirs == ours, (name, theirs, ours)


def test_qwen3_thinking_switch(gpt2_tokenizer, tmp_path):
    """Qwen3's rendering: past reasoning dropped from earlier replies; thinking off starts the reply after an
    empty think block; transformers' apply_chat_template with our template and `enable_thinking` agrees."""
    from scratchllm.checkpoints.convert import to_hf
    from scratchllm.models import build_model

    qwen3 = STYLES["qwen3"]
    turns = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
             {"role": "user", "content": "And 3+3?"}]  # fmt: skip
    assert qwen3.render(SYSTEM + turns) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert qwen3.render(turns[:1], thinking=False) == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    to_hf(build_model("gpt-tiny", vocab_size=50257), gpt2_tokenizer, tmp_path, prompt_style=qwen3)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for messages in (turns, SYSTEM + turns, turns[:2]):
        for thinking in (True, False):
            theirs = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                enable_thinking=thinking)  # fmt: skip
            assert theirs == qwen3.render(messages, thinking)


def test_gemma_turns():
    """Gemma's turns: `model` for the assistant, the system message folded into the first user turn, trimmed."""
    assert STYLES["gemma"].render(SYSTEM + [{"role": "user", "content": " Name a color.\n"},
                                            {"role": "assistant", "content": "Blue."}]) == (
        "<bos><start_of_turn>user\nBe brief.\n\nName a color.<end_of_turn>\n<start_of_turn>model\nBlue.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )  # fmt: skip
