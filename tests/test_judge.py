"""LLM-as-judge against our own `serve` (a real server): request shape, parsing, retries, resuming, summary."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.judge import RUBRICS, Judge, bootstrap_ci, compare, judge_file, parse_score, summary
from scratchllm.generation.engine import Engine
from scratchllm.models import build_model
from scratchllm.prompts import STYLES
from scratchllm.serving.app import Settings
from tests.serving_helpers import ServerThread, free_port

RECORDS = [{"instruction": f"Name color {i}.", "input": "" if i % 2 else "x", "output": "Blue.", "model_response": r}
           for i, r in enumerate(["Blue.", "Red.", "Blue!"])]  # fmt: skip


def reply_model(reply: int, eos: int = 50256):
    """A GPT-2 that answers any prompt with the token `reply` and then ends: blocks switched off, so the final
    norm's bias alone picks `reply`, and after `reply` its embedding picks the end-of-text token."""
    torch.manual_seed(0)
    model = build_model("gpt-tiny", vocab_size=50257, context_length=512).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("attn.proj.weight", "attn.proj.bias", "ff.fc2.weight", "ff.fc2.bias")):
                p.zero_()
        for w in (model.tok_emb.weight, model.pos_emb.weight, model.out_head.weight, model.final_norm.bias):
            w.zero_()
        model.final_norm.bias[0] = 1.0
        model.out_head.weight[reply, 0] = 20.0
        model.tok_emb.weight[reply, 1] = 10.0
        model.out_head.weight[eos, 1] = 20.0
    return model


@pytest.fixture(scope="module")
def judge_server(gpt2_tokenizer):
    engine = Engine(reply_model(gpt2_tokenizer.encode("85")[0]), gpt2_tokenizer, max_batch=2)
    with ServerThread(engine, Settings("judge", STYLES["plain"], api_key="k")) as server:
        yield server


def test_book_prompt_and_parsing():
    prompt = RUBRICS["book"].prompt(RECORDS[0])
    assert prompt.startswith("Given the input `Below is an instruction that describes a task.")
    assert "### Input:\nx` and correct output `Blue.`, score the model response `Blue.` on a scale from 0 to" in prompt
    assert prompt.endswith("Respond with the integer number only.")
    assert [parse_score(r, RUBRICS["book"]) for r in ("85", "Score: 90.", "101", "7.5", "great", "")] == [
        85, 90, None, None, None, None]  # fmt: skip
    assert parse_score("4", RUBRICS["1-5"]) == 4 and parse_score("0", RUBRICS["1-5"]) is None


def test_judging_against_our_server_saves_replies_and_resumes(judge_server, tmp_path):
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps(RECORDS))
    judge = Judge(judge_server.url + "/v1", "judge", api_key="k")
    scored = judge_file(judge, responses, tmp_path / "scores.json", RUBRICS["book"])
    assert [r["score"] for r in scored] == [85, 85, 85] and all(r["judge_reply"] == "85" for r in scored)
    assert json.loads((tmp_path / "scores.json").read_text()) == scored
    assert summary(scored) == {"records": 3, "scored": 3, "unparsable": 0, "mean": 85.0, "ci95": (85.0, 85.0)}
    stats = judge_server.engine.stats
    before = (stats.decode_steps, stats.prefill_seconds)
    again = judge_file(judge, responses, tmp_path / "scores.json", RUBRICS["book"])  # resumed: nothing sent
    assert again == scored and (stats.decode_steps, stats.prefill_seconds) == before
    with pytest.raises(ScratchLLMError, match="401"):  # a client error is not retried
        judge_file(Judge(judge_server.url + "/v1", "judge", api_key="wrong"), responses, tmp_path / "x.json",
                   RUBRICS["book"])  # fmt: skip


def test_unparsable_replies_are_counted(gpt2_tokenizer, tmp_path):
    engine = Engine(reply_model(gpt2_tokenizer.encode("great")[0]), gpt2_tokenizer, max_batch=2)
    responses = tmp_path / "r.json"
    responses.write_text(json.dumps(RECORDS[:2]))
    with ServerThread(engine, Settings("judge", STYLES["plain"])) as server:
        scored = judge_file(Judge(server.url + "/v1", "judge"), responses, tmp_path / "s.json", RUBRICS["book"])
    assert [r["judge_reply"] for r in scored] == ["great", "great"]
    assert summary(scored) == {"records": 2, "scored": 0, "unparsable": 2}


def test_transport_errors_are_retried_until_the_server_is_up(gpt2_tokenizer, tmp_path):
    port = free_port()
    with pytest.raises(ScratchLLMError, match="no answer after 2 attempts"):
        Judge(f"http://127.0.0.1:{port}/v1", "judge", retries=1, backoff=0.01).ask("hi")
    engine = Engine(reply_model(gpt2_tokenizer.encode("85")[0]), gpt2_tokenizer, max_batch=1)
    server = ServerThread(engine, Settings("judge", STYLES["plain"]))
    late = threading.Timer(0.5, server.__enter__)  # the judge starts first and must wait for it
    late.start()
    try:
        answer = Judge(server.url + "/v1", "judge", retries=6, backoff=0.2).ask("hi")
    finally:
        late.join()
        server.__exit__(None, None, None)
    assert answer == "85"


def test_compare_and_bootstrap():
    a = [{"score": s} for s in (90, 80, 70, None)]
    b = [{"score": s} for s in (80, 80, 90, 50)]
    c = compare(a, b)
    assert (c["pairs"], c["wins"], c["ties"], c["losses"]) == (3, 1, 1, 1)
    assert c["mean_difference"] == pytest.approx(-10 / 3)
    low, high = bootstrap_ci([float(v) for v in range(100)])
    assert 40 < low < 49.5 < high < 59


def test_judge_cli(judge_server, tmp_path, capsys):
    from scratchllm.cli.main import main

    (tmp_path / "a.json").write_text(json.dumps(RECORDS))
    (tmp_path / "b.json").write_text(json.dumps(RECORDS[::-1]))
    assert main(["evaluate", "judge", "--responses", str(tmp_path / "a.json"), "--compare", str(tmp_path / "b.json"),
                 "--endpoint", judge_server.url + "/v1", "--model", "judge", "--api-key", "k"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "mean 85.00 (95% CI 85.00-85.00) over 3 of 3 records; 0 unparsable" in out
    assert "mean difference +0.00" in out and (tmp_path / "b-scores.json").exists()


class ScriptedJudge:
    """A plain http.server endpoint that answers with the statuses and bodies a test chooses, and counts requests:
    an independent server, so retry and parsing behaviour is not tested against our own serve alone."""

    def __init__(self, answers):
        import http.server

        self.answers, self.requests = list(answers), 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests += 1
                status, body = outer.answers[min(outer.requests, len(outer.answers)) - 1]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def chat_reply(content):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_sent_once(status):
    server = ScriptedJudge([(status, {"error": {"message": "no such thing"}})])
    try:
        with pytest.raises(ScratchLLMError, match=f"HTTP {status}: no such thing"):
            Judge(server.url, "j", retries=3, backoff=0.01).ask("hi")
        assert server.requests == 1
    finally:
        server.close()


def test_overload_and_server_errors_are_retried_and_contents_of_every_shape_read():
    server = ScriptedJudge([(503, {"error": {"message": "busy"}}), (429, {"error": {"message": "slow down"}}),
                            (500, {}), (200, chat_reply(85))])  # fmt: skip
    try:
        assert Judge(server.url, "j", retries=3, backoff=0.01).ask("hi") == "85" and server.requests == 4
        server.answers, server.requests = [(200, chat_reply([{"type": "text", "text": "Score: "},
                                                             {"type": "text", "text": "90"}]))], 0  # fmt: skip
        assert parse_score(Judge(server.url, "j").ask("hi"), RUBRICS["book"]) == 90
        server.answers, server.requests = [(200, chat_reply({"odd": 1}))], 0
        with pytest.raises(ScratchLLMError, match="not an OpenAI chat completion reply"):
            Judge(server.url, "j").ask("hi")
    finally:
        server.close()
    with pytest.raises(ScratchLLMError, match="expected the http"):
        Judge("file:///etc/passwd", "j")


def test_resume_needs_the_same_records_judge_and_rubric(tmp_path):
    server = ScriptedJudge([(200, chat_reply("70"))])
    try:
        responses = tmp_path / "r.json"
        responses.write_text(json.dumps(RECORDS))
        judge_file(Judge(server.url, "j"), responses, tmp_path / "s.json", RUBRICS["book"])
        sent = server.requests
        changed = [dict(r) for r in RECORDS]
        changed[1]["model_response"] = "Green."
        responses.write_text(json.dumps(changed))
        for judge, rubric in ((Judge(server.url, "j"), "book"), (Judge(server.url, "other"), "book"),
                              (Judge(server.url, "j"), "1-5")):  # fmt: skip
            if rubric == "book" and judge.model == "other":
                responses.write_text(json.dumps(RECORDS))
            with pytest.raises(ScratchLLMError, match="other records, another judge or another rubric"):
                judge_file(judge, responses, tmp_path / "s.json", RUBRICS[rubric])
        assert server.requests == sent  # nothing was sent for a mismatched resume
    finally:
        server.close()


def test_the_mean_ignores_unparsable_replies_and_compare_bootstraps_the_differences():
    scored = [{"score": s} for s in (80, None, 60, None)]
    assert summary(scored)["mean"] == 70 and summary(scored)["unparsable"] == 2
    g = torch.Generator().manual_seed(0)
    a = [{"score": int(v)} for v in torch.randint(60, 100, (200,), generator=g)]
    b = [{"score": int(v)} for v in torch.randint(20, 70, (200,), generator=g)]
    c = compare(a, b)
    diffs = torch.tensor([x["score"] - y["score"] for x, y in zip(a, b)], dtype=torch.float64)
    se = float(diffs.std() / len(diffs) ** 0.5)  # the normal approximation as the independent reference
    low, high = c["ci95"]
    assert c["mean_difference"] == pytest.approx(float(diffs.mean()))
    assert low == pytest.approx(float(diffs.mean()) - 1.96 * se, abs=0.4 * se)
    assert high == pytest.approx(float(diffs.mean()) + 1.96 * se, abs=0.4 * se)
