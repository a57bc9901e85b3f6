"""`scratchllm evaluate perplexity`: a model's perplexity and bits per byte on a text file.

Long texts are scored with a sliding window (--context tokens, a new window every --stride tokens; every
token scored once, with at least context - stride tokens of history). `--json` prints one JSON line.
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model: perplexity, or an LLM judge", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    kinds = p.add_subparsers(dest="action", metavar="KIND", required=True)
    ppl = kinds.add_parser("perplexity", help="perplexity and bits per byte on a text file", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ppl.add_argument("--checkpoint", required=True, help="run folder, HuggingFace folder, hub name or preset")
    ppl.add_argument("--data", required=True, help="a UTF-8 text file, or the-verdict (shipped)")
    ppl.add_argument("--tokenizer", default=None, help="override the checkpoint's tokenizer")
    ppl.add_argument("--context", type=int, default=None, help="window length (default: the model's context)")
    ppl.add_argument("--stride", type=int, default=None, help="tokens between windows (default: --context)")
    ppl.add_argument("--batch-size", type=int, default=8)
    ppl.add_argument("--dtype", default="fp32", choices=["auto", "fp32", "bf16"])
    ppl.add_argument("--device", default=None)
    ppl.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ppl.set_defaults(handler=run_perplexity)
    judge = kinds.add_parser("judge", help="score responses with an LLM judge (book ch. 7.8)",
                             description=JUDGE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    judge.add_argument("--responses", required=True, help="JSON records with instruction/input/output/model_response")
    judge.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    judge.add_argument("--model", required=True, help="the judge model's name at that endpoint")
    judge.add_argument("--api-key", default=None, help="bearer key (default: $OPENAI_API_KEY if set)")
    judge.add_argument("--rubric", default="book", choices=["book", "1-5"], help="0-100 as the book, or 1-5")
    judge.add_argument("--out", default=None, help="scores file (default: RESPONSES-scores.json); resumed if present")
    judge.add_argument("--compare", default=None, help="a second responses file, judged and compared record by record")
    judge.add_argument("--retries", type=int, default=4, help="retries on transport errors, 429 and 5xx")
    judge.add_argument("--seed", type=int, default=123, help="sent with every request (the book: 123)")
    judge.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one reply")
    judge.set_defaults(handler=run_judge)


JUDGE_DOC = """Score model responses with a judge model behind any OpenAI-compatible endpoint (book ch. 7.8).

Sends the book's prompt (or a 1-5 rubric) for every record at temperature 0 with a seed, retries transport
errors with backoff, saves each raw reply and parsed score next to its record (unparsable replies are
counted), resumes a partly scored file, and prints the mean with a bootstrap 95% confidence interval.
--compare judges a second responses file and compares the two record by record.
"""


def run_judge(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from tqdm import tqdm

    from scratchllm.errors import ScratchLLMError
    from scratchllm.evaluation.judge import RUBRICS, Judge, compare, judge_file, summary

    if args.retries < 0:
        raise ScratchLLMError(f"--retries must be >= 0, got {args.retries}")
    judge = Judge(args.endpoint, args.model, args.api_key or os.environ.get("OPENAI_API_KEY"), args.retries,
                  timeout=args.timeout, seed=args.seed)  # fmt: skip
    inputs = {Path(f).resolve() for f in (args.responses, args.compare) if f}
    if args.out and Path(args.out).resolve() in inputs:
        raise ScratchLLMError(f"--out {args.out}: is one of the responses files it would score; choose another")
    rubric = RUBRICS[args.rubric]
    results = []
    for responses, out in ((args.responses, args.out), (args.compare, None)):
        if responses is None:
            continue
        out = Path(out or Path(responses).with_name(Path(responses).stem + "-scores.json"))
        bar = tqdm(desc=f"judging {Path(responses).name}", unit="record")

        def progress(done: int, total: int, bar=bar) -> None:
            bar.total = total
            bar.update(done - bar.n)

        scored = judge_file(judge, responses, out, rubric, progress)
        bar.close()
        s = summary(scored)
        results.append(scored)
        mean = f"mean {s['mean']:.2f} (95% CI {s['ci95'][0]:.2f}-{s['ci95'][1]:.2f})" if "mean" in s else "no score"
        print(f"{responses}: {mean} over {s['scored']} of {s['records']} records; {s['unparsable']} unparsable "
              f"replies; scores in {out}")  # fmt: skip
    if len(results) == 2:
        c = compare(*results)
        if c["pairs"]:
            print(f"{args.responses} - {args.compare}: mean difference {c['mean_difference']:+.2f} (95% CI "
                  f"{c['ci95'][0]:+.2f} to {c['ci95'][1]:+.2f}) over {c['pairs']} records; wins {c['wins']}, "
                  f"ties {c['ties']}, losses {c['losses']}")  # fmt: skip
    return 0


def run_perplexity(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from scratchllm.checkpoints.load import check_tokenizer_fits, load_checkpoint
    from scratchllm.errors import ScratchLLMError
    from scratchllm.evaluation.perplexity import perplexity
    from scratchllm.files import read_text
    from scratchllm.tokenizers.formats import load_tokenizer

    path = Path(args.data)
    if not path.exists() and args.data == "the-verdict":
        from scratchllm.assets import ASSETS

        path = ASSETS / "the-verdict.txt"
    text = read_text(path)
    loaded = load_checkpoint(args.checkpoint, args.dtype, args.device)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else loaded.tokenizer
    if tokenizer is None:
        raise ScratchLLMError(f"{args.checkpoint}: no tokenizer found with this checkpoint; pass --tokenizer")
    check_tokenizer_fits(loaded.model, tokenizer, args.tokenizer or args.checkpoint)
    ids = tokenizer.encode(text)
    result = perplexity(loaded.model, ids, len(text.encode("utf-8")), args.context, args.stride, args.batch_size,
                        progress=not args.json)  # fmt: skip
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "data": str(path), **result.to_dict()}))
    else:
        print(f"{path}: perplexity {result.perplexity:.3f}, loss {result.loss:.4f} nats/token, "
              f"{result.bits_per_byte:.4f} bits/byte ({result.tokens:,} tokens scored, {result.n_bytes:,} bytes, "
              f"{result.windows} windows)")  # fmt: skip
    return 0
