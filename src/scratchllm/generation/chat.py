"""Multi-turn conversation state for `scratchllm chat` (prompt styles themselves live in `scratchllm.prompts`).

`Conversation.prompt_ids` renders the turns with the style and drops the oldest turns until the prompt plus
the reply budget fits the context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scratchllm.errors import ScratchLLMError
from scratchllm.prompts import STYLES, PromptStyle, default_style, get_style


def pick_template(name: str | None, tokenizer, saved: str | None = None) -> PromptStyle:
    """An explicit name, else the style the model was fine-tuned with, else the tokenizer's, else plain."""
    if name:
        return get_style(name)
    if saved:
        return get_style(saved)
    return default_style(tokenizer) or STYLES["plain"]


@dataclass
class Conversation:
    template: PromptStyle
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
