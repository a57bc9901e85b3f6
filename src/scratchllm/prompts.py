"""Prompt styles: how instructions and chat messages become the exact text a model is trained on and prompted with.

One source of truth, below `data` (instruction fine-tuning formats its records with it) and `generation`
(chat, generate and the server render messages with it):
- `alpaca`: the book's ch. 7 format: a fixed header, `### Instruction:`, `### Input:` only when the input
  is non-empty, `### Response:`;
- `phi3`: the book's exercise 7.1 variant, `<|user|>` then `<|assistant|>:` markers;
- `chatml`: `<|im_start|>role ... <|im_end|>` turns;
- `llama3`: Meta's header tokens (`<|start_header_id|>role<|end_header_id|>` ... `<|eot_id|>`);
- `qwen3`: ChatML as Qwen3 uses it, with its thinking switch: earlier assistant turns lose their
  `<think>...</think>` reasoning, and with thinking off the reply starts after an empty think block (what
  Qwen3's own template does with `enable_thinking=False`);
- `gemma`: Gemma's `<start_of_turn>role ... <end_of_turn>` turns, the assistant named `model`, a system
  message folded into the first user turn (Gemma has no system role), contents trimmed;
- `plain`: "User: ... / Assistant:" for base models.
A style renders a conversation up to where the reply starts (`render`), formats an instruction record
(`format_instruction`, the book's `format_input` plus the response marker), and carries a Jinja
`chat_template` that makes transformers' `apply_chat_template(..., add_generation_prompt=True)` (and
llama.cpp, which reads it from a GGUF file) produce exactly `render`'s string (tests hold them equal), so an
exported fine-tuned model keeps its format; `ollama_template` is the same in Go's template language, for
Ollama. Go templates have no string functions, so two details are left out there: gemma's trimming of
contents and qwen3's removal of earlier turns' reasoning (the thinking switch is Ollama's own).
The style a model was fine-tuned with is saved in its run folder (`STYLE_FILE`) and used without flags.
"""

from __future__ import annotations

from dataclasses import dataclass

from scratchllm.errors import ScratchLLMError

ALPACA_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
STYLE_FILE = "prompt_style.json"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PromptStyle:
    name: str
    stop_strings: tuple[str, ...]  # text that ends a reply (besides the tokenizer's end-of-text ids)
    chat_template: str  # Jinja, for HuggingFace tokenizer_config.json and GGUF files
    ollama_template: str  # Go text/template over .Messages, for Ollama's Modelfile

    def render(self, messages: list[dict[str, str]], thinking: bool = True) -> str:
        """Messages ({"role": system|user|assistant, "content": ...}) -> the prompt, ending where the reply starts.

        `thinking=False` asks a reasoning model (the qwen3 style) to answer directly; other styles ignore it.
        """
        for i, m in enumerate(messages):
            if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ScratchLLMError(f"message {i}: expected a role in {ROLES} and a string content, got {m!r}")
        if self.name == "qwen3":
            return _qwen3(messages, thinking)
        return _RENDER[self.name](messages)

    def format_instruction(self, instruction: str, input: str = "") -> str:
        """An instruction record's prompt (the book's `format_input`), ending with the response marker."""
        if self.name == "alpaca":
            text = f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}"
            return text + (f"\n\n### Input:\n{input}" if input else "") + "\n\n### Response:\n"
        return self.render([{"role": "user", "content": instruction + (f"\n{input}" if input else "")}])


def _alpaca(messages: list[dict[str, str]]) -> str:
    header, rest = (messages[0]["content"], messages[1:]) if messages and messages[0]["role"] == "system" else (
        ALPACA_HEADER, messages)  # fmt: skip
    text = header
    for m in rest:
        marker = "### Instruction:" if m["role"] == "user" else "### Response:"
        text += f"\n\n{marker}\n{m['content']}"
    return text + "\n\n### Response:\n"


def _phi3(messages: list[dict[str, str]]) -> str:
    parts = [f"<|assistant|>:\n{m['content']}" if m["role"] == "assistant" else f"<|{m['role']}|>\n{m['content']}"
             for m in messages]  # fmt: skip
    return "\n".join(parts) + "\n<|assistant|>:\n"


def _chatml(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + (
        "<|im_start|>assistant\n")  # fmt: skip


def _llama3(messages: list[dict[str, str]]) -> str:
    turns = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)
    return "<|begin_of_text|>" + turns + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _qwen3(messages: list[dict[str, str]], thinking: bool) -> str:
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    text = ""
    for i, m in enumerate(messages):
        content = m["content"]
        if m["role"] == "assistant" and i < last_user and "</think>" in content:
            content = content.split("</think>")[-1].lstrip("\n")  # past reasoning is not shown again
        text += f"<|im_start|>{m['role']}\n{content}<|im_end|>\n"
    return text + "<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n")


def _gemma(messages: list[dict[str, str]]) -> str:
    system = messages[0]["content"].strip() + "\n\n" if messages and messages[0]["role"] == "system" else ""
    text = "<bos>"
    for i, m in enumerate(messages[1:] if system else messages):
        role = "model" if m["role"] == "assistant" else m["role"]
        text += f"<start_of_turn>{role}\n{system if i == 0 else ''}{m['content'].strip()}<end_of_turn>\n"
    return text + "<start_of_turn>model\n"


def _plain(messages: list[dict[str, str]]) -> str:
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"


_RENDER = {"alpaca": _alpaca, "phi3": _phi3, "chatml": _chatml, "llama3": _llama3, "gemma": _gemma, "plain": _plain}

# The same rules in Jinja (`add_generation_prompt` appends what `render` always ends with).
_NL = "\\n"
_TEMPLATES = {
    "alpaca": (
        "{%- if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
        "{%- set rest = messages[1:] %}{%- else %}{{ '" + ALPACA_HEADER + "' }}{%- set rest = messages %}{%- endif %}"
        "{%- for m in rest %}{%- if m['role'] == 'user' %}"
        "{{ '" + _NL * 2 + "### Instruction:" + _NL + "' + m['content'] }}"
        "{%- else %}{{ '" + _NL * 2 + "### Response:" + _NL + "' + m['content'] }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '" + _NL * 2 + "### Response:" + _NL + "' }}{%- endif %}"
    ),
    "phi3": (
        "{%- for m in messages %}{%- if not loop.first %}{{ '" + _NL + "' }}{%- endif %}"
        "{%- if m['role'] == 'assistant' %}{{ '<|assistant|>:" + _NL + "' + m['content'] }}"
        "{%- else %}{{ '<|' + m['role'] + '|>" + _NL + "' + m['content'] }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '" + _NL + "<|assistant|>:" + _NL + "' }}{%- endif %}"
    ),
    "chatml": (
        "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '" + _NL + "' + m['content'] + '<|im_end|>" + _NL
        + "' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant" + _NL + "' }}{%- endif %}"
    ),
    "llama3": (
        "{{ '<|begin_of_text|>' }}{%- for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>"
        + _NL * 2 + "' + m['content'] + '<|eot_id|>' }}{%- endfor %}"
        "{%- if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>" + _NL * 2 + "' }}{%- endif %}"
    ),
    "qwen3": (
        "{%- set ns = namespace(last_user=-1) %}{%- for m in messages %}{%- if m['role'] == 'user' %}"
        "{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
        "{%- for m in messages %}{%- set content = m['content'] %}"
        "{%- if m['role'] == 'assistant' and loop.index0 < ns.last_user and '</think>' in content %}"
        "{%- set content = content.split('</think>')[-1].lstrip('" + _NL + "') %}{%- endif %}"
        "{{ '<|im_start|>' + m['role'] + '" + _NL + "' + content + '<|im_end|>" + _NL + "' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant" + _NL + "' }}"
        "{%- if enable_thinking is defined and enable_thinking is false %}"
        "{{ '<think>" + _NL * 2 + "</think>" + _NL * 2 + "' }}{%- endif %}{%- endif %}"
    ),
    "gemma": (
        "{{ '<bos>' }}{%- set ns = namespace(system='') %}"
        "{%- if messages and messages[0]['role'] == 'system' %}"
        "{%- set ns.system = messages[0]['content'] | trim + '" + _NL * 2 + "' %}{%- set rest = messages[1:] %}"
        "{%- else %}{%- set rest = messages %}{%- endif %}"
        "{%- for m in rest %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '" + _NL
        + "' + (ns.system if loop.first else '') + m['content'] | trim + '<end_of_turn>" + _NL + "' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<start_of_turn>model" + _NL + "' }}{%- endif %}"
    ),
    "plain": (
        "{%- for m in messages %}{{ m['role'] | capitalize }}{{ ': ' + m['content'] + '" + _NL + "' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ 'Assistant:' }}{%- endif %}"
    ),
}

# Ollama's Go templates (`{{-` trims the template text before it, so the layout here is for reading).
_CHATML_GO = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
              "<|im_start|>assistant\n")  # fmt: skip
_OLLAMA = {
    "alpaca": (
        '{{- if and .Messages (eq (index .Messages 0).Role "system") }}{{ (index .Messages 0).Content }}'
        "{{- else }}" + ALPACA_HEADER + "{{- end }}"
        '{{- range .Messages }}{{- if eq .Role "user" }}\n\n### Instruction:\n{{ .Content }}'
        '{{- else if eq .Role "assistant" }}\n\n### Response:\n{{ .Content }}{{- end }}{{- end }}\n\n### Response:\n'
    ),
    "phi3": (
        "{{- range $i, $m := .Messages }}{{- if $i }}\n{{ end }}"
        '{{- if eq $m.Role "assistant" }}<|assistant|>:\n{{ $m.Content }}'
        "{{- else }}<|{{ $m.Role }}|>\n{{ $m.Content }}{{- end }}{{- end }}\n<|assistant|>:\n"
    ),
    "chatml": _CHATML_GO,
    "llama3": (
        "<|begin_of_text|>{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}"
        "<|eot_id|>{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "qwen3": _CHATML_GO,
    "gemma": (
        '<bos>{{- $system := "" }}{{- range $i, $m := .Messages }}'
        '{{- if and (eq $i 0) (eq $m.Role "system") }}{{- $system = printf "%s\\n\\n" $m.Content }}'
        '{{- else }}<start_of_turn>{{ if eq $m.Role "assistant" }}model{{ else }}{{ $m.Role }}{{ end }}\n'
        '{{ $system }}{{ $system = "" }}{{ $m.Content }}<end_of_turn>\n{{ end }}{{- end }}<start_of_turn>model\n'
    ),
    "plain": (
        '{{- range .Messages }}{{ if eq .Role "user" }}User{{ else if eq .Role "assistant" }}Assistant'
        "{{ else }}System{{ end }}: {{ .Content }}\n{{ end }}Assistant:"
    ),
}

STYLES = {
    name: PromptStyle(name, stops, _TEMPLATES[name], _OLLAMA[name])
    for name, stops in (
        ("alpaca", ("\n\n### Instruction:", "\n\n### Input:", "\n### Response:")),
        ("phi3", ("\n<|user|>", "<|assistant|>:")),
        ("chatml", ("<|im_end|>", "<|im_start|>")),
        ("llama3", ()),  # ends at the <|eot_id|> stop id
        ("qwen3", ("<|im_end|>", "<|im_start|>")),
        ("gemma", ("<end_of_turn>", "<start_of_turn>")),
        ("plain", ("\nUser:",)),
    )
}


def get_style(name: str) -> PromptStyle:
    if name not in STYLES:
        raise ScratchLLMError(f"prompt style {name!r}: expected one of {', '.join(STYLES)}")
    return STYLES[name]


def default_style(tokenizer) -> PromptStyle | None:
    """The style a tokenizer implies: llama3 for Llama 3's header tokens, qwen3 for ChatML with think tokens,
    chatml for ChatML alone, else none (a base model)."""
    specials = getattr(tokenizer, "special_tokens", {}) or {}
    if "<|start_header_id|>" in specials:
        return STYLES["llama3"]
    if "<|im_start|>" in specials:
        return STYLES["qwen3" if "<think>" in specials else "chatml"]
    if "<start_of_turn>" in specials:
        return STYLES["gemma"]
    return None
