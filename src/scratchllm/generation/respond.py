"""Greedy responses to a list of prompts, batched on the engine (book ch. 7.7's response extraction).

Used by instruction fine-tuning (validation samples while training, the test split's responses at the end)
and by the `respond` verb, so a run's test responses and a later `respond` on the same records agree.
"""

from __future__ import annotations

import torch


def respond(model: torch.nn.Module, tokenizer, prompts: list[str], stop_ids: tuple[int, ...],
            stop_strings: tuple[str, ...], max_new_tokens: int, batch: int = 8,
            progress: bool = False) -> list[str]:  # fmt: skip
    """The greedy reply to each prompt, ending at an end-of-text id or stop string, stripped of spaces."""
    from tqdm import tqdm

    from scratchllm.generation.engine import Engine, GenerationConfig

    was_training = model.training
    model.eval()
    context = model.config.context_length
    engine = Engine(model, tokenizer, max_batch=batch, prepare=False)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=stop_ids, stop_strings=stop_strings,
                           overflow="slide")  # fmt: skip
    # A prompt longer than the context keeps its end, where the response starts.
    requests = [engine.submit(tokenizer.encode(p, allowed_special="all")[-(context - 1) :], cfg) for p in prompts]
    bar = tqdm(total=len(requests), desc="responses", unit="record", disable=not progress)
    done = 0
    while not engine.idle:
        engine.step()
        finished = sum(r.done for r in requests)
        bar.update(finished - done)
        done = finished
    bar.close()
    model.train(was_training)
    return [r.text.strip() for r in requests]
