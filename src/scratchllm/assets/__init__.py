"""Small public files shipped inside the package, so the book's commands run with only the repository.

- `the-verdict.txt`: Edith Wharton's short story "The Verdict" (1908, public domain), the book's ch. 2-5
  corpus; `--data the-verdict` names it.
- `gpt2/encoder.json` + `gpt2/vocab.bpe`: OpenAI's GPT-2 byte-level BPE vocabulary (MIT, see `gpt2/LICENSE`),
  byte-identical to the files tiktoken downloads; `--tokenizer gpt2` names it, offline.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
NAMED_CORPORA = {"the-verdict": ASSETS / "the-verdict.txt"}
GPT2_TOKENIZER = ASSETS / "gpt2"
