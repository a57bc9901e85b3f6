"""The OpenAI-compatible server, hit by the official `openai` client and raw HTTP: a real uvicorn server on a
loopback port with a small model (no mocks)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from scratchllm.generation.engine import Engine, GenerationConfig
from scratchllm.generation.generate import generate
from scratchllm.prompts import STYLES
from scratchllm.serving.app import Settings
from tests.serving_helpers import ServerThread, scripted_model
from tests.test_engine import sharp_model

MODEL = "tiny-test"
KEY = "sk-test"


@pytest.fixture(scope="module")
def served(gpt2_tokenizer):
    model = sharp_model(vocab_size=50257, context_length=128)
    weights = {k: v.clone() for k, v in model.state_dict().items()}  # the engine may repack them out of it
    engine = Engine(model, gpt2_tokenizer, max_batch=8, max_queue=64)
    with ServerThread(engine, Settings(MODEL, STYLES["plain"], api_key=KEY, max_tokens=100)) as server:
        server.weights = weights
        yield server


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def reference(served, gpt2_tokenizer, prompt: str, n: int, stop=()) -> str:
    """What the library's `generate` gives on the same (prepared) model, greedy."""
    ids = gpt2_tokenizer.encode(prompt, allowed_special="all")
    cfg = GenerationConfig(max_new_tokens=n, stop_ids=(50256,), stop_strings=tuple(stop))
    return generate(served.engine.model, [ids], cfg, tokenizer=gpt2_tokenizer).texts[0]


def test_models_and_health(served, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")
    health = httpx.get(served.url + "/health").json()
    assert health["status"] == "ok" and health["prefill"]["budget"] == 512


def test_completion_streamed_equals_unstreamed_equals_generate(served, client, gpt2_tokenizer):
    prompt = "Every effort moves you"
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert full.choices[0].text == streamed == reference(served, gpt2_tokenizer, prompt, 24)
    n_prompt = len(gpt2_tokenizer.encode(prompt))
    assert (full.usage.prompt_tokens, full.usage.completion_tokens) == (n_prompt, 24)
    assert full.choices[0].finish_reason == "length"
    assert len({c.id for c in chunks}) == 1  # one id for every chunk
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2] if c.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == n_prompt


def test_chat_stream_roles_stop_and_max_tokens(served, client, gpt2_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story"}]
    prompt = STYLES["plain"].render(messages)
    free = reference(served, gpt2_tokenizer, prompt, 30)
    stop = free.split()[3]  # a word from the middle of the greedy answer
    expected = reference(served, gpt2_tokenizer, prompt, 30, stop=("\nUser:", stop))
    assert stop not in expected and len(expected) < len(free)
    reply = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=30, stop=stop)
    assert reply.choices[0].message.content == expected and reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=30,
                                                 stop=[stop], stream=True))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
    short = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_completion_tokens=5)
    assert short.usage.completion_tokens == 5 and short.choices[0].finish_reason == "length"


def test_seed_n_and_logprobs(client):
    kwargs = dict(model=MODEL, prompt="Hello there", max_tokens=12, temperature=1.2, seed=5)
    a, b = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert a.choices[0].text == b.choices[0].text
    forked = httpx.get(str(client.base_url.join("/health"))).json()["forked_prefills"]
    many = client.completions.create(**kwargs, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2] and many.usage.completion_tokens == 36
    assert many.choices[0].text == a.choices[0].text and len({c.text for c in many.choices}) > 1
    # the prompt was prefilled once for the 3 choices, and the seeded choices repeat exactly
    assert httpx.get(str(client.base_url.join("/health"))).json()["forked_prefills"] == forked + 2
    assert [c.text for c in client.completions.create(**kwargs, n=3).choices] == [c.text for c in many.choices]
    # greedy choices are the single request's tokens (sampled ones equal theirs only up to rounding: one row and
    # three rows run different matrix kernels, which can flip a draw that falls on a near-tie)
    greedy = {**kwargs, "temperature": 0}
    alone = client.completions.create(**greedy).choices[0].text
    assert [c.text for c in client.completions.create(**greedy, n=2).choices] == [alone, alone]
    zero = client.completions.create(**{**kwargs, "logprobs": 0}).choices[0].logprobs  # the chosen token alone
    assert [list(top) for top in zero.top_logprobs] == [[t] for t in zero.tokens]
    assert [top[t] for top, t in zip(zero.top_logprobs, zero.tokens)] == zero.token_logprobs
    lp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                        temperature=0, logprobs=True, top_logprobs=3)  # fmt: skip
    content = lp.choices[0].logprobs.content
    assert len(content) == 4 and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.logprob == pytest.approx(t.top_logprobs[0].logprob) for t in content)  # greedy picks the top one
    assert all(t.logprob <= 0 for t in content)


@pytest.mark.parametrize(
    "body,status,param",
    [({"prompt": "x", "temperature": -1}, 400, "temperature"), ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
     ({"prompt": "x", "max_tokens": 101}, 400, "max_tokens"), ({"prompt": ""}, 400, "prompt"),
     ({"prompt": "x", "n": 99}, 400, "n"), ({"prompt": "x", "stop": 3}, 400, "stop"),
     ({"prompt": "x", "presence_penalty": 1.0}, 400, "presence_penalty"),
     ({"prompt": "x", "logprobs": 21}, 400, "logprobs"), ({"prompt": "x", "top_p": 0}, 400, "top_p"),
     ({"prompt": "word " * 120, "max_tokens": 20}, 400, "max_tokens"),
     ({"prompt": "x", "model": "other"}, 404, "model"), ({"prompt": "x", "max_token": 5}, 400, "max_token"),
     ({"prompt": "x", "reasoning_effort": "low"}, 400, "reasoning_effort"),
     ({"prompt": "x", "messages": []}, 400, "messages")],
)  # fmt: skip
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(served, client, body, status, param):
    r = httpx.post(served.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]
    assert set(error) == {"message", "type", "param", "code"}
    assert client.completions.create(model=MODEL, prompt="ok", max_tokens=2, temperature=0).usage.completion_tokens == 2


def test_auth_size_json_and_routes(served):
    url = served.url
    assert httpx.post(url + "/v1/completions", json={"prompt": "x"}).status_code == 401
    wrong = httpx.post(url + "/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer wrong"})
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    auth = {"Authorization": f"Bearer {KEY}"}
    big = httpx.post(url + "/v1/completions", content=b"{" + b" " * (2 << 20) + b"}", headers=auth)
    assert big.status_code == 413 and "error" in big.json()
    bad = httpx.post(url + "/v1/completions", content=b"{not json", headers=auth)
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
    sent = []

    def chunked():  # no Content-Length: the server must count what arrives and stop at its limit
        for _ in range(64):
            sent.append(1)
            yield b" " * (256 << 10)

    try:
        upload = httpx.post(url + "/v1/completions", content=chunked(), headers=auth)
        assert upload.status_code == 413 and upload.json()["error"]["message"].startswith("request body over")
    except httpx.HTTPError:  # the server may answer and close before the client has sent everything
        pass
    nested = httpx.post(url + "/v1/completions", content=b"[" * 100_000 + b"]" * 100_000, headers=auth)
    assert nested.status_code == 400 and "nested too deeply" in nested.json()["error"]["message"]
    assert httpx.get(url + "/v1/nothing", headers=auth).json()["error"]["type"] == "not_found_error"
    robot = {"messages": [{"role": "robot", "content": "x"}]}
    msgs = httpx.post(url + "/v1/chat/completions", json=robot, headers=auth)
    assert msgs.status_code == 400 and msgs.json()["error"]["param"] == "messages[0].role"


def test_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="x", temperature=5)
    assert caught.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


def test_streamed_text_is_utf8_safe(gpt2_tokenizer):
    """The model writes "日本語 🤖" one byte-level token at a time (most tokens are a piece of a character);
    no streamed piece may hold half a character, and the pieces join to the exact text."""
    ids = gpt2_tokenizer.encode("naïve 日本語 🤖")
    assert len(set(ids)) == len(ids)
    engine = Engine(scripted_model(ids[2:] + [50256], prompt_len=2), gpt2_tokenizer, max_batch=2)
    with ServerThread(engine, Settings("bigram")) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        chunks = list(client.completions.create(model="bigram", prompt=ids[:2], max_tokens=20, temperature=0,
                                                stream=True))  # fmt: skip
    pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert "".join(pieces) == " 日本語 🤖" and chunks[-1].choices[0].finish_reason == "stop"
    assert len(pieces) >= 3 and not any("\ufffd" in p for p in pieces)


def test_eight_concurrent_clients_are_batched_and_get_their_own_answers(served, client):
    prompts = [f"Story number {i}: once upon a time" for i in range(8)]
    one_by_one = [client.completions.create(model=MODEL, prompt=p, max_tokens=40, temperature=0).choices[0].text
                  for p in prompts]  # fmt: skip
    served.engine.stats.largest_batch = 0
    results: dict[int, str] = {}
    barrier = threading.Barrier(8)

    def ask(i: int) -> None:
        barrier.wait()
        results[i] = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=40,
                                               temperature=0).choices[0].text  # fmt: skip

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results[i] for i in range(8)] == one_by_one
    assert served.engine.stats.largest_batch >= 4  # they were decoded together, not one after another


def test_bounded_load(served, client):
    """A fixed number of streaming requests from 16 threads against a time limit; all complete, exact usage."""
    deadline = time.time() + 120
    done: list[int] = []
    errors: list[Exception] = []

    def worker(k: int) -> None:
        for j in range(3):
            if time.time() > deadline:
                return
            try:
                text, usage = "", None
                for c in client.completions.create(model=MODEL, prompt=f"Request {k}.{j}", max_tokens=10 + k,
                                                   temperature=0.7, seed=k, stream=True,
                                                   stream_options={"include_usage": True}):  # fmt: skip
                    text += c.choices[0].text if c.choices else ""
                    usage = c.usage or usage
                assert usage.completion_tokens <= 10 + k
                done.append(k)
            except Exception as e:  # collected: an assertion in a thread would be lost
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    assert not errors and len(done) == 48
    health = httpx.get(served.url + "/health").json()
    assert {k: health[k] for k in ("status", "running", "waiting")} == {"status": "ok", "running": 0, "waiting": 0}


def test_chat_without_template_is_a_clear_400(gpt2_tokenizer):
    engine = Engine(sharp_model(vocab_size=50257, context_length=64), gpt2_tokenizer, max_batch=2)
    with ServerThread(engine, Settings("base")) as server:
        r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "no_chat_template"
        ok = httpx.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def test_sse_wire_format(served):
    """The raw stream: `data: {json}` events, one id, [DONE] last (what any SSE client relies on)."""
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 5, "stream": True, "temperature": 0}
    with httpx.stream("POST", served.url + "/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "text_completion" for c in chunks)


def test_a_full_queue_answers_429_and_the_server_recovers(gpt2_tokenizer):
    cycle = gpt2_tokenizer.encode(" Once upon a time,")
    model = scripted_model(cycle, 3, context=2048, emb_dim=256, repeat=True)
    engine = Engine(model, gpt2_tokenizer, max_batch=1, max_queue=1)
    body = {"prompt": [464, 318, 257], "max_tokens": 2000, "stream": True}
    with ServerThread(engine, Settings("busy")) as server:
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as running:
            lines = running.iter_lines()  # kept: a dropped iterator closes the stream (the server cancels it)
            next(lines)  # decoding: the one row is taken
            waiting = threading.Thread(target=httpx.post, args=(server.url + "/v1/completions",),
                                       kwargs={"json": {**body, "stream": False, "max_tokens": 3}, "timeout": 60})
            waiting.start()
            while not engine._waiting:
                time.sleep(0.01)
            refused = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
            assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
        waiting.join(timeout=60)  # the closed stream was cancelled, so the waiting request ran
        ok = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_echo_scores_the_prompt_as_transformers_does(served, client, gpt2_tokenizer):
    """lm-eval's loglikelihood request (echo, logprobs, max_tokens 0 or 1): each prompt token's logprob is
    transformers' log-softmax of the same weights at the position before it, the first one null."""
    import torch
    import transformers

    from scratchllm.checkpoints.hf import config_to_hf, state_dict_to_hf

    model = served.engine.model
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config_to_hf(model.config))).eval()
    hf.load_state_dict(state_dict_to_hf(served.weights, model.config), strict=False)
    prompt = "The quick brown fox jumps over the lazy dog"
    ids = gpt2_tokenizer.encode(prompt)
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
    expected = [logp[t - 1, ids[t]].item() for t in range(1, len(ids))]
    for max_tokens in (0, 1):
        reply = client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=max_tokens,
                                          temperature=0)  # fmt: skip
        choice = reply.choices[0]
        assert choice.text.startswith(prompt) and len(choice.logprobs.tokens) == len(ids) + max_tokens
        assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
        got = choice.logprobs.token_logprobs[1 : len(ids)]
        assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-4
        top = choice.logprobs.top_logprobs[1]  # the 2 best, and the prompt's own token if it is not one of them
        best = logp[0].topk(2)
        assert sorted(top.values(), reverse=True)[:2] == pytest.approx(best.values.tolist(), abs=1e-4)
        assert len(top) <= 3 and top[choice.logprobs.tokens[1]] == pytest.approx(got[0])
        assert reply.usage.completion_tokens == max_tokens
    assert choice.text == prompt + reference(served, gpt2_tokenizer, prompt, 1)
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.completions.create(model=MODEL, prompt=prompt, echo=True, max_tokens=1, stream=True)


def test_a_list_of_prompts_equals_single_requests(served, client, gpt2_tokenizer):
    prompts = ["Every effort moves you", "Hello", "The sky is"]
    batch = client.completions.create(model=MODEL, prompt=prompts, max_tokens=8, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1, 2]
    for prompt, choice in zip(prompts, batch.choices):
        assert choice.text == reference(served, gpt2_tokenizer, prompt, 8)
    assert batch.usage.prompt_tokens == sum(len(gpt2_tokenizer.encode(p)) for p in prompts)
    as_ids = client.completions.create(model=MODEL, prompt=[gpt2_tokenizer.encode(p) for p in prompts[:2]], n=2,
                                       max_tokens=4, temperature=0)  # fmt: skip
    assert [c.text for c in as_ids.choices] == [reference(served, gpt2_tokenizer, p, 4) for p in prompts[:2]
                                                for _ in range(2)]  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.completions.create(model=MODEL, prompt=["ok", ""], max_tokens=2)


def _alpaca_stream(gpt2_tokenizer, words: list[str], **options) -> list:
    """The chunks of a streamed chat reply that writes `words` (one token each, then end-of-text), served in the
    alpaca style, whose stop strings are 15-20 characters long."""
    alpaca = STYLES["alpaca"]
    message = [{"role": "user", "content": "Name a color."}]
    prompt_len = len(gpt2_tokenizer.encode(alpaca.render(message), allowed_special="all"))
    script = [gpt2_tokenizer.encode(w)[0] for w in words] + [50256]
    engine = Engine(scripted_model(script, prompt_len), gpt2_tokenizer, max_batch=2)
    with ServerThread(engine, Settings(MODEL, alpaca)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
        return list(client.chat.completions.create(model=MODEL, messages=message, stream=True, temperature=0,
                                                   **options))  # fmt: skip


def test_stream_sends_each_token_when_no_stop_string_could_be_starting(gpt2_tokenizer):
    """Alpaca's stop strings are 15-20 characters; a reply's first chunk still carries its first token."""
    words = ["Blue", " is", " calm", "."]
    chunks = _alpaca_stream(gpt2_tokenizer, words)
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert contents == words  # one chunk per token, none held back


def test_streamed_logprobs_come_with_their_text(gpt2_tokenizer):
    """A token whose text is held back (a newline could begin alpaca's "\\n### Response:") sends its logprob
    with the chunk that releases its text: every chunk's logprob tokens spell exactly its content."""
    words = ["Blue", "\n", "sky", "."]
    chunks = _alpaca_stream(gpt2_tokenizer, words, logprobs=True, top_logprobs=1)
    with_text = [c.choices[0] for c in chunks if c.choices and c.choices[0].delta.content]
    assert [c.delta.content for c in with_text] == ["Blue", "\nsky", "."]
    for c in with_text:
        assert "".join(t.token for t in c.logprobs.content) == c.delta.content
    tokens = [t.token for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert tokens == [*words, "<|endoftext|>"]  # every sampled token once, the end-of-text id last


def test_fields_are_honoured_refused_or_bookkeeping(served, client):
    """Bookkeeping fields are accepted; a field that would change the output and is not honoured is a 400."""
    message = [{"role": "user", "content": "Hi"}]
    ok = client.chat.completions.create(model=MODEL, messages=message, max_tokens=2, user="u1", store=False,
                                        metadata={"run": "a"}, modalities=["text"], tool_choice="none")  # fmt: skip
    assert ok.usage.completion_tokens == 2
    for extra in ({"reasoning_effort": "low"}, {"prediction": {"type": "content", "content": "x"}},
                  {"modalities": ["audio"]}, {"tool_choice": "auto"}, {"echo": True}):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=message, max_tokens=2, extra_body=extra)
        assert e.value.body["param"] == next(iter(extra))


def test_a_keyless_server_answers_no_other_web_origin_and_no_rebound_host(gpt2_tokenizer):
    """Without --api-key, any web page the user opens could post to 127.0.0.1: a request carrying another
    page's Origin, or a Host that is not a loopback name (DNS rebinding), gets a 403 in OpenAI's shape; the
    openai client, curl (no Origin) and the chat page (its own origin) are answered; with a key both pass."""
    engine = Engine(scripted_model(gpt2_tokenizer.encode(" yes") + [50256], prompt_len=1), gpt2_tokenizer)
    body = {"model": "m", "prompt": "x", "max_tokens": 2}
    with ServerThread(engine, Settings("m", bind_host="127.0.0.1")) as server:
        url = server.url + "/v1/completions"
        own = f"127.0.0.1:{server.port}"
        assert httpx.post(url, json=body).status_code == 200
        assert httpx.post(url, json=body, headers={"Origin": f"http://{own}"}).status_code == 200
        for headers, code in (({"Origin": "http://evil.example"}, "origin_not_allowed"),
                              ({"Origin": "null"}, "origin_not_allowed"),
                              ({"Host": "evil.example"}, "host_not_allowed"),
                              ({"Host": f"evil.example:{server.port}"}, "host_not_allowed")):  # fmt: skip
            reply = httpx.post(url, json=body, headers=headers)
            assert reply.status_code == 403 and reply.json()["error"]["code"] == code, headers
        assert httpx.post(url, json=body, headers={"Host": f"localhost:{server.port}"}).status_code == 200
        reply = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0).completions.create(**body)
        assert reply.choices[0].text == " yes"
    with ServerThread(engine, Settings("m", api_key="k", bind_host="127.0.0.1")) as server:
        headers = {"Origin": "http://evil.example", "Host": "evil.example", "Authorization": "Bearer k"}
        assert httpx.post(server.url + "/v1/completions", json=body, headers=headers).status_code == 200


def test_a_shared_system_prompt_is_served_from_the_prefix_cache(served, client, gpt2_tokenizer):
    """Two chats with one long system prompt: the second starts from the cached prefix (/health counts it)
    and answers what a cold generation of the same prompt gives."""
    system = "You are a careful assistant who answers in one short sentence and never makes things up. " * 2
    before = httpx.get(served.url + "/health").json()["prefix_cache"]
    replies = []
    for question in ("Who are you?", "What is the time?"):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        replies.append(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0))
    after = httpx.get(served.url + "/health").json()["prefix_cache"]
    assert after["hits"] >= before["hits"] + 1 and after["reused_tokens"] >= before["reused_tokens"] + 30
    assert 0 < after["hit_rate"] <= 1
    prompt = STYLES["plain"].render([{"role": "system", "content": system},
                                     {"role": "user", "content": "What is the time?"}])  # fmt: skip
    assert replies[1].choices[0].message.content == reference(served, gpt2_tokenizer, prompt, 8)


def test_served_greedy_text_is_transformers_greedy_text(served, client, gpt2_tokenizer):
    """The independent peer beside the `reference` helper (our own `generate`): transformers' greedy
    continuation of the same weights, for a completion and for a batch of two prompts served together."""
    import torch
    import transformers

    from scratchllm.checkpoints.hf import config_to_hf, state_dict_to_hf

    config = served.engine.model.config
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config_to_hf(config))).eval()
    hf.load_state_dict(state_dict_to_hf(served.weights, config), strict=False)
    prompts = ["It had always been", "The picture was hung in the"]
    replies = client.completions.create(model=MODEL, prompt=prompts, max_tokens=12, temperature=0).choices
    for prompt, choice in zip(prompts, sorted(replies, key=lambda c: c.index)):
        ids = torch.tensor([gpt2_tokenizer.encode(prompt)])
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                              do_sample=False, pad_token_id=0)  # fmt: skip
        assert choice.text == gpt2_tokenizer.decode(out[0, ids.shape[1] :].tolist())
