"""LLM-as-judge (book ch. 7.8): score model responses with any OpenAI-compatible endpoint.

The judge is another model behind `/v1/chat/completions`: our own `serve`, Ollama's `/v1`, vLLM, a hosted
API. Decisions:
- Prompts: the book's (score 0-100 given the instruction, the correct output and the model response; reply
  with the integer only), or a 1-5 rubric. Requests ask for temperature 0 and a seed, so a judge that honours
  them (ours does) scores reproducibly.
- Transport errors, 429 and 5xx answers are retried with exponential backoff; other 4xx answers are the
  caller's mistake and stop at once with the server's message.
- Every raw reply is saved next to its record (`judge_reply`, `score`); a reply without an integer in range
  is counted as unparsable (score null), never dropped silently and never a 0 in the mean. The scores file
  is rewritten atomically after each record, and a rerun skips records that already have a reply: judging
  resumes, but only for the same records, judge (model and URL) and rubric.
- The summary is the mean with a bootstrap 95% confidence interval (resampling records, seeded). Two
  response files are compared record by record: the mean paired difference with its own bootstrap
  interval, and wins / ties / losses.
"""

from __future__ import annotations

import json
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.files import atomic_write, read_text
from scratchllm.prompts import STYLES

RESPONSE_MARKER = "\n\n### Response:\n"


@dataclass(frozen=True)
class Rubric:
    name: str
    low: int
    high: int
    template: str

    def prompt(self, record: dict) -> str:
        instruction = STYLES["alpaca"].format_instruction(record["instruction"], record.get("input") or "")
        return self.template.format(input=instruction.removesuffix(RESPONSE_MARKER), output=record["output"],
                                    response=record["model_response"])  # fmt: skip


RUBRICS = {
    "book": Rubric("book", 0, 100, "Given the input `{input}` and correct output `{output}`, score the model response "
                   "`{response}` on a scale from 0 to 100, where 100 is the best score. Respond with the integer "
                   "number only."),  # fmt: skip
    "1-5": Rubric("1-5", 1, 5, "Given the input `{input}` and correct output `{output}`, rate the model response "
                  "`{response}` from 1 to 5: 1 wrong or unhelpful, 2 mostly wrong, 3 partly correct, 4 correct with "
                  "minor flaws, 5 fully correct and complete. Respond with the integer only."),  # fmt: skip
}


def parse_score(reply: str, rubric: Rubric) -> int | None:
    """The first integer in the reply, if it lies on the rubric's scale; None otherwise."""
    match = re.search(r"-?\d+(\.\d+)?", reply or "")
    if match is None or match.group(1):
        return None
    value = int(match.group(0))
    return value if rubric.low <= value <= rubric.high else None


class Judge:
    """A chat-completions client with retries (urllib: no client library needed)."""

    def __init__(self, endpoint: str, model: str, api_key: str | None = None, retries: int = 4,
                 backoff: float = 1.0, timeout: float = 120.0, seed: int = 123):  # fmt: skip
        if not re.match(r"https?://[^/\s]+", endpoint):
            raise ScratchLLMError(f"--endpoint {endpoint!r}: expected the http:// or https:// URL of an OpenAI-"
                                  "compatible API, e.g. http://127.0.0.1:8000/v1")  # fmt: skip
        if not timeout > 0:
            raise ScratchLLMError(f"--timeout must be > 0 seconds, got {timeout}")
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.retries, self.backoff = model, api_key, retries, backoff
        self.timeout, self.seed = timeout, seed

    @property
    def name(self) -> str:
        """Who judged: saved with every score, so a rerun with another judge never reuses them."""
        return f"{self.model} at {self.url}"

    def ask(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "seed": self.seed, "max_tokens": 16}).encode()  # fmt: skip
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as r:
                    reply = json.loads(r.read())
                return _content_text(reply["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as e:
                message = _error_message(e)
                if e.code != 429 and e.code < 500:
                    raise ScratchLLMError(f"judge {self.url}: HTTP {e.code}: {message}") from None
                last = f"HTTP {e.code}: {message}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = str(getattr(e, "reason", e))
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise ScratchLLMError(f"judge {self.url}: not an OpenAI chat completion reply ({e})") from None
        raise ScratchLLMError(f"judge {self.url}: no answer after {self.retries + 1} attempts (last: {last})")


def _content_text(content) -> str:
    """A reply's text: a string, a list of content parts (their text joined), a bare number, or nothing."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (int, float)) and not isinstance(content, bool):
        return str(content)
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return "".join(str(part.get("text", "")) for part in content if part.get("type", "text") == "text")
    raise TypeError(f"message content is a {type(content).__name__}")


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        return json.loads(e.read())["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return e.reason


def read_responses(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        records = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ScratchLLMError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(records, list) or not records:
        raise ScratchLLMError(f"{path}: expected a non-empty JSON list of records")
    for i, r in enumerate(records):
        for name in ("instruction", "output", "model_response"):
            if not isinstance(r, dict) or not isinstance(r.get(name), str):
                raise ScratchLLMError(f"{path}: record {i}: field {name!r} missing or not a string")
    return records


def judge_file(judge: Judge, responses: str | Path, out: str | Path, rubric: Rubric,
               progress: Callable[[int, int], None] | None = None) -> list[dict]:  # fmt: skip
    """Score every record of `responses` into `out` (resuming from what `out` already holds)."""
    records = read_responses(responses)
    out = Path(out)
    done: list[dict] = []
    if out.exists():
        try:
            done = json.loads(out.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise ScratchLLMError(f"{out}: not a scores file; use another --out") from None
        # Resume only what was judged of exactly these records, by this judge, with this rubric.
        same = isinstance(done, list) and len(done) <= len(records) and all(
            isinstance(d, dict) and all(d.get(k) == v for k, v in r.items()) and d.get("rubric") == rubric.name
            and d.get("judge") == judge.name for d, r in zip(done, records))  # fmt: skip
        if not same:
            raise ScratchLLMError(f"{out}: holds scores of other records, another judge or another rubric; "
                                  "use another --out (or delete it to judge again)")  # fmt: skip
    scored = list(done)
    for i, record in enumerate(records[len(done) :], start=len(done)):
        reply = judge.ask(rubric.prompt(record))
        scored.append({**record, "rubric": rubric.name, "judge": judge.name, "judge_reply": reply,
                       "score": parse_score(reply, rubric)})  # fmt: skip
        text = json.dumps(scored, indent=1, ensure_ascii=False)
        atomic_write(out, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
        if progress is not None:
            progress(i + 1, len(records))
    return scored


def bootstrap_ci(values: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def summary(scored: list[dict]) -> dict:
    scores = [r["score"] for r in scored if r["score"] is not None]
    result = {"records": len(scored), "scored": len(scores), "unparsable": len(scored) - len(scores)}
    if scores:
        result["mean"] = sum(scores) / len(scores)
        result["ci95"] = bootstrap_ci(scores)
    return result


def compare(a: list[dict], b: list[dict]) -> dict:
    """Record-by-record comparison of two scored files (records with both scores)."""
    pairs = [(x["score"], y["score"]) for x, y in zip(a, b) if x["score"] is not None and y["score"] is not None]
    if not pairs:
        return {"pairs": 0}
    diffs = [float(x - y) for x, y in pairs]
    return {"pairs": len(pairs), "mean_difference": sum(diffs) / len(diffs), "ci95": bootstrap_ci(diffs),
            "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs), "losses": sum(d < 0 for d in diffs)}
