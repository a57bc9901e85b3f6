"""`scratchllm serve` as users run it: a separate process, stopped with SIGTERM while streaming."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from scratchllm.checkpoints.io import save_model
from tests.serving_helpers import free_port, scripted_model

PROMPT = [464, 318, 257]  # three token ids: the scripted model starts writing after them


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, gpt2_tokenizer):
    folder = tmp_path_factory.mktemp("served")
    cycle = gpt2_tokenizer.encode(" Once upon a time,")
    save_model(scripted_model(cycle, len(PROMPT), context=2048, emb_dim=256, repeat=True), folder)
    gpt2_tokenizer.save(folder / "scratchllm-tokenizer.json")
    return folder


def start(folder: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cli = Path(sys.executable).with_name("scratchllm")
    proc = subprocess.Popen([str(cli), "serve", "--checkpoint", str(folder), "--port", str(port), "--dtype", "fp32",
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"serve did not start: {proc.communicate()[0]}")


def stream_then_sigterm(proc, url: str, max_tokens: int) -> tuple[list[str], int]:
    """Stream a completion, send SIGTERM after the first chunk; return the events and a new request's status."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    events, during = [], None
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if not line:
                continue
            events.append(line)
            if len(events) == 1:
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.2)
                during = httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}).status_code
    return events, during


def test_sigterm_lets_inflight_requests_finish(model_folder):
    proc, url = start(model_folder, "--graceful-seconds", "60")
    try:
        events, during = stream_then_sigterm(proc, url, 1500)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert during == 503  # draining: new requests are refused with OpenAI's error shape
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 1500
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_sigterm_ends_what_cannot_finish_with_an_error_event(model_folder):
    proc, url = start(model_folder, "--graceful-seconds", "0.3")
    try:
        events, _ = stream_then_sigterm(proc, url, 2040)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])
    assert "shutting down" in last["error"]["message"] and last["error"]["type"] == "service_unavailable"
