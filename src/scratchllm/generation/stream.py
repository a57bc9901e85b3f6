"""Token ids to text as they are generated: which ids end a generation, and decoding that never shows half a
character or the start of a stop string.

Both are used by the engine for every request, and by `generate`/`stream_text` and the server through it.
"""

from __future__ import annotations

import codecs

END_OF_TEXT_NAMES = ("<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "</s>", "<|im_end|>", "<|end|>", "<eos>",
                     "<end_of_turn>")  # fmt: skip


def end_of_text_ids(tokenizer) -> tuple[int, ...]:
    """The ids of the tokenizer's end-of-text / end-of-turn tokens: generation stops after any of them."""
    specials = getattr(tokenizer, "special_tokens", {}) or {}
    return tuple(i for name, i in specials.items() if name in END_OF_TEXT_NAMES)


class StreamDecoder:
    """Incremental token -> text decoding that never emits half of a multi-byte UTF-8 character.

    Text that could be the beginning of a stop string is held back until it is known not to be one: only
    the longest end of the pending text that is a prefix of some stop string waits, so a reply streams token
    by token even under a template whose stop strings are long (alpaca's 18 characters); `stopped` turns
    True once a stop string has appeared (the text before it has then been emitted).
    """

    def __init__(self, tokenizer, stop_strings: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self._bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self._pending += self._bytes.decode(self.tokenizer.token_bytes(token))
        if self.stop_strings and any(s in self._pending for s in self.stop_strings):
            self.stopped = True
            cut = min(self._pending.find(s) for s in self.stop_strings if s in self._pending)
            out, self._pending = self._pending[:cut], ""
            return out
        cut = len(self._pending) - self._held(self._pending)
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def _held(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string (0: nothing could be starting)."""
        longest = 0
        for stop in self.stop_strings:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def flush(self) -> str:
        if self.stopped:
            return ""
        out, self._pending = self._pending + self._bytes.decode(b"", final=True), ""
        return out
