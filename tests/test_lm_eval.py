"""lm-evaluation-harness against `scratchllm serve`: its `local-completions` backend (echo + logprobs requests,
batches of 4 prompts) scores a multiple-choice and a lambada-style loglikelihood task exactly as its own `hf`
backend does on the same transformers folder."""

from __future__ import annotations

import json
import random

import lm_eval
import pytest
import torch
from lm_eval.tasks import TaskManager

from scratchllm.checkpoints.convert import to_hf
from scratchllm.checkpoints.load import load_checkpoint
from scratchllm.generation.engine import Engine
from scratchllm.models import build_model
from scratchllm.serving.app import Settings
from tests.serving_helpers import ServerThread

WORDS = "the cat sat on a mat and dog ran to big red house tree sky blue green sun".split()
TASKS = {
    "tiny_mc": {"output_type": "multiple_choice", "doc_to_text": "Question: {{question}}\nAnswer:",
                "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]},
    "tiny_lambada": {"output_type": "loglikelihood", "doc_to_text": "{{context}}", "doc_to_target": " {{target}}",
                     "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                                     {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]},
}  # fmt: skip


def _task_files(folder) -> None:
    rng = random.Random(0)
    phrase = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    docs = {"tiny_mc": [{"question": phrase(6), "choices": [phrase(2) for _ in range(4)], "answer": i % 4}
                        for i in range(12)],
            "tiny_lambada": [{"context": phrase(10), "target": rng.choice(WORDS)} for _ in range(12)]}  # fmt: skip
    for name, spec in TASKS.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs[name]))
        task = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test", **spec}  # fmt: skip
        (folder / f"{name}.yaml").write_text(json.dumps(task))  # JSON is YAML


def test_lm_eval_scores_served_model_as_its_hf_backend(tmp_path, gpt2_tokenizer, monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    torch.manual_seed(0)
    to_hf(build_model("gpt-tiny", vocab_size=50257, context_length=128).eval(), gpt2_tokenizer, tmp_path / "hf")
    (tmp_path / "tasks").mkdir()
    _task_files(tmp_path / "tasks")
    manager = TaskManager(include_path=str(tmp_path / "tasks"))
    loaded = load_checkpoint(tmp_path / "hf", "fp32")
    with ServerThread(Engine(loaded.model, loaded.tokenizer, max_batch=4), Settings("tiny")) as server:
        args = (f"model=tiny,base_url={server.url}/v1/completions,tokenizer_backend=huggingface,"
                f"tokenizer={tmp_path / 'hf'},num_concurrent=1,max_retries=1")  # fmt: skip
        served = lm_eval.simple_evaluate(model="local-completions", model_args=args, tasks=list(TASKS),
                                         task_manager=manager, batch_size=4)  # fmt: skip
    hf_args = f"pretrained={tmp_path / 'hf'},dtype=float32"
    reference = lm_eval.simple_evaluate(model="hf", model_args=hf_args, tasks=list(TASKS), task_manager=manager,
                                        batch_size=4, device="cpu")  # fmt: skip
    ours, theirs = served["results"], reference["results"]
    assert ours["tiny_mc"]["acc,none"] == theirs["tiny_mc"]["acc,none"]
    assert ours["tiny_lambada"]["acc,none"] == theirs["tiny_lambada"]["acc,none"]
    expected = theirs["tiny_lambada"]["perplexity,none"]
    assert ours["tiny_lambada"]["perplexity,none"] == pytest.approx(expected, rel=1e-5)
