"""A real server for tests: `scratchllm.serving` on uvicorn, in a thread, on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import torch
import uvicorn

from scratchllm.generation.engine import Engine
from scratchllm.models import build_model
from scratchllm.serving.app import Settings, create_app


def scripted_model(script: list[int], prompt_len: int, context: int = 64, emb_dim: int = 64, repeat: bool = False):
    """A GPT-2 that writes `script` after any prompt of `prompt_len` tokens (then `script` again if `repeat`).

    Its blocks are switched off (zero output projections, so the residual stream is the embedding) and token
    embeddings are zero: position p carries direction e_j (j = p - prompt_len + 1, modulo the script when
    repeating), and the head maps e_j to script[j] with a large margin. A real model through the real engine
    and server, whose output a test can choose.
    """
    assert len(script) <= emb_dim
    torch.manual_seed(0)
    model = build_model("gpt-tiny", vocab_size=50257, context_length=context, emb_dim=emb_dim).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("attn.proj.weight", "attn.proj.bias", "ff.fc2.weight", "ff.fc2.bias")):
                p.zero_()
        for w in (model.tok_emb.weight, model.pos_emb.weight, model.out_head.weight):
            w.zero_()
        for j in range(context - prompt_len + 1):
            if j >= len(script) and not repeat:
                break
            model.pos_emb.weight[prompt_len - 1 + j, j % len(script)] = 10.0
        for k, token in enumerate(script):
            model.out_head.weight[token, k] = 20.0
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(engine, settings), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the test server did not start within 30 s")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
