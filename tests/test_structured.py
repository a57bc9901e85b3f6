"""Structured output: JSON schemas enforced token by token. A model with random weights, which knows nothing
of JSON, must still produce replies that parse and validate (jsonschema, an independent validator) because
the grammar allows nothing else; through the server, `response_format` as the openai client sends it."""

from __future__ import annotations

import json
import random

import jsonschema
import openai
import pytest
import torch

from scratchllm.generation.engine import Engine, GenerationConfig
from scratchllm.models import build_model
from scratchllm.prompts import STYLES
from scratchllm.serving.app import Settings
from tests.serving_helpers import ServerThread


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """A small schema whose every reply is finite: bounded strings, integers and arrays, closed objects."""
    kinds = ["string", "integer", "boolean", "enum", "array"] + (["object"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "string":
        return {"type": "string", "minLength": rng.randint(0, 2), "maxLength": rng.randint(3, 8)}
    if kind == "integer":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 500)}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "a b", "x\"y", "ünï"], rng.randint(1, 4))}
    if kind == "array":
        return {"type": "array", "items": random_schema(rng, depth + 2), "maxItems": rng.randint(1, 3)}
    names = rng.sample(["name", "age", "ok", "tags", "colour", "id", "nested"], rng.randint(1, 4))
    return {"type": "object", "properties": {n: random_schema(rng, depth + 1) for n in names},
            "required": rng.sample(names, rng.randint(0, len(names))), "additionalProperties": False}  # fmt: skip


@pytest.fixture(scope="module")
def engine(gpt2_tokenizer):
    torch.manual_seed(0)
    return Engine(build_model("gpt-tiny", vocab_size=50257, context_length=512).eval(), gpt2_tokenizer, max_batch=4)


def test_twenty_random_schemas_parse_and_validate_with_random_weights(engine):
    rng = random.Random(0)
    schemas = [random_schema(rng) for _ in range(20)]
    prompt = engine.tokenizer.encode("Reply in JSON:")
    requests = [engine.submit(prompt, GenerationConfig(max_new_tokens=300, json_schema=s, temperature=(i % 2) * 1.0,
                                                       seed=i, stop_ids=(50256,)))
                for i, s in enumerate(schemas)]  # fmt: skip
    engine.run()
    for schema, r in zip(schemas, requests):
        assert r.finish_reason in ("grammar", "stop_id"), (schema, r.text)
        jsonschema.validate(json.loads(r.text), schema)
    unconstrained = engine.submit(prompt, GenerationConfig(max_new_tokens=20))
    engine.run()
    with pytest.raises(json.JSONDecodeError):  # the constraint did the work: without it, no JSON
        json.loads(unconstrained.text)


def test_response_format_through_the_openai_client(engine):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
              "rank": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["city", "rank"],
              "additionalProperties": False}  # fmt: skip
    with ServerThread(engine, Settings("m", STYLES["chatml"])) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
        message = [{"role": "user", "content": "Name a city and its rank as JSON."}]
        reply = client.chat.completions.create(
            model="m", messages=message, max_tokens=200, seed=3,
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
        )  # fmt: skip
        jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
        assert reply.choices[0].finish_reason == "stop"
        # Any object: with unbounded strings a random model may still be inside one at max_tokens (as OpenAI
        # warns, a reply cut by the length limit is not complete JSON); a complete one parses.
        chunks = list(client.chat.completions.create(model="m", messages=message, max_tokens=60, stream=True,
                                                     seed=1, response_format={"type": "json_object"}))  # fmt: skip
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
        assert text.startswith("{") and (finish == "length" or isinstance(json.loads(text), dict))
        for bad, fragment in (({"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}, "schema"),
                              ({"type": "xml"}, "json_object or json_schema")):  # fmt: skip
            with pytest.raises(openai.BadRequestError) as err:
                client.chat.completions.create(model="m", messages=message, max_tokens=5, response_format=bad)
            assert fragment in str(err.value) and err.value.body["param"] == "response_format"


def test_a_sentencepiece_vocabulary_with_byte_fallback(tmp_path):
    """Gemma-style SentencePiece (control and byte pieces, no dummy prefix): every piece that is no text is
    marked special in the token table, so even a model that wants `<start_of_turn>` at every step (its logit
    raised far above the rest) never puts it inside a JSON string, and non-ASCII strings come out valid."""
    from scratchllm.tokenizers import load_tokenizer
    from tests.hf_families import gemma_style_sentencepiece

    texts = ['{"name": "Zoë", "ok": true}', "plain words and digits 12345", "ünïcödé {} [] : ,"] * 20
    gemma_style_sentencepiece(texts, tmp_path, 300)
    tokenizer = load_tokenizer(tmp_path)
    torch.manual_seed(0)
    model = build_model("gemma3-tiny", vocab_size=tokenizer.vocab_size + 12, context_length=256).eval()  # padded
    turn = tokenizer.special_tokens["<start_of_turn>"]

    class Favour(torch.nn.Module):  # the output head, with that token's logit raised by 100
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, x):
            y = self.head(x)
            y[..., turn] += 100
            return y

    model.out_head = Favour(model.out_head)
    engine = Engine(model, tokenizer, max_batch=2, prepare=False)
    schema = {"type": "object", "properties": {"name": {"enum": ["Zoë", "Ünï"]}, "note": {"type": "string",
              "maxLength": 40}, "n": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["name", "note", "n"], "additionalProperties": False}  # fmt: skip
    r = engine.submit(tokenizer.encode("json:"), GenerationConfig(max_new_tokens=120, json_schema=schema,
                                                                  temperature=1.0, seed=5))  # fmt: skip
    engine.run()
    jsonschema.validate(json.loads(r.text), schema)
    assert all(t < tokenizer.vocab_size for t in r.tokens)  # never a padded id
    assert not set(r.tokens) & set(tokenizer.special_tokens.values())
