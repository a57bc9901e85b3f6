"""Chat prompt templates and the multi-turn conversation state used by `scratchllm chat`.

A template turns a list of messages into the exact text the model was trained on:
- `plain`:  "User: ...\nAssistant: ..." for base models and our own pretrained models;
- `alpaca`: the book's ch. 7 instruction format ("### Instruction:" / "### Response:");
- `llama3`: Meta's header tokens (`<|start_header_id|>role<|end_header_id|>` ... `<|eot_id|>`).
`Conversation.prompt_ids` drops the oldest turns until the prompt plus the reply budget fits the context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scratchllm.errors import ScratchLLMError

ALPACA_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    stop_strings: tuple[str, ...]

    def render(self, messages: list[dict[str, str]]) -> str:
        """Messages ({"role": "system"|"user"|"assistant", "content": ...}) -> prompt ending where the reply starts."""
        if self.name == "llama3":
            text = "<|begin_of_text|>"
            for m in messages:
                text += f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
            return text + "<|start_header_id|>assistant<|end_header_id|>\n\n"
        if self.name == "alpaca":
            text = ALPACA_HEADER
            for m in messages:
                if m["role"] == "user":
                    text += f"\n\n### Instruction:\n{m['content']}"
                elif m["role"] == "assistant":
                    text += f"\n\n### Response:\n{m['content']}"
            return text + "\n\n### Response:\n"
        text = ""
        for m in messages:
            text += f"{m['role'].capitalize()}: {m['content']}\n"
        return text + "Assistant:"


TEMPLATES = {
    "plain": ChatTemplate("plain", ("\nUser:",)),
    "alpaca": ChatTemplate("alpaca", ("\n\n### Instruction:", "\n### Response:")),
    "llama3": ChatTemplate("llama3", ()),  # ends at the <|eot_id|> stop id
}


def pick_template(name: str | None, tokenizer) -> ChatTemplate:
    """An explicit name, else llama3 for tokenizers with Llama 3's header tokens, else plain."""
    if name:
        if name not in TEMPLATES:
            raise ScratchLLMError(f"--template {name!r}: expected one of {sorted(TEMPLATES)}")
        return TEMPLATES[name]
    if "<|start_header_id|>" in getattr(tokenizer, "special_tokens", {}):
        return TEMPLATES["llama3"]
    return TEMPLATES["plain"]


@dataclass
class Conversation:
    template: ChatTemplate
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.turns.clear()

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def prompt_ids(self, tokenizer, context_length: int, reply_budget: int) -> list[int]:
        """Token ids of the rendered conversation, oldest user/assistant pairs dropped until it fits."""
        while True:
            ids = tokenizer.encode(self.template.render(self.messages()), allowed_special="all")
            if len(ids) + reply_budget <= context_length or len(self.turns) <= 1:
                break
            del self.turns[:2]  # one user message and its reply
        if len(ids) + 1 > context_length:
            raise ScratchLLMError(
                f"the message alone takes {len(ids)} tokens, more than the context length {context_length}"
            )
        return ids
