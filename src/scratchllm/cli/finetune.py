"""`scratchllm finetune classify`: turn a pretrained model into a text classifier (book ch. 6).

Starts from any --checkpoint (a run folder, a HuggingFace or Meta folder, a hub name such as `gpt2`, or a
preset for random weights), reads a CSV/TSV/JSONL file of labelled texts (or the named dataset `sms-spam`,
downloaded once), balances and splits it as the book does, and trains on the shared loop: the same
checkpoints, exact --resume, metrics.jsonl and plots as pretraining. The defaults are the book's recipe
(GPT-2 124M, last block + final norm + a new 2-class head, lr 5e-5, weight decay 0.1, batch 8, 5 epochs).
Every config field is a flag; --config FILE.yaml holds the same fields (configs/classify-sms-book.yaml).
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from scratchllm.cli.flags import add_config_flags
    from scratchllm.training.config import ClassifyConfig

    p = sub.add_parser("finetune", help="fine-tune a model for a task (classify)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    tasks = p.add_subparsers(dest="action", metavar="TASK", required=True)
    c = tasks.add_parser("classify", help="text classification (book ch. 6)", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    c.add_argument("--config", default=None, help="YAML file with ClassifyConfig fields")
    c.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its last checkpoint")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty --out-dir with the new run")
    add_config_flags(c, ClassifyConfig)
    c.set_defaults(handler=run_classify)


def run_classify(args: argparse.Namespace) -> int:

    from scratchllm.cli.flags import config_file_for, config_overrides, is_main_process
    from scratchllm.training.classify import finetune_classifier
    from scratchllm.training.config import ClassifyConfig, build_config

    cfg = build_config(config_file_for(args, ClassifyConfig), ClassifyConfig, **config_overrides(args))
    result = finetune_classifier(cfg, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():
        return 0  # under torchrun, rank 0 alone reports
    test = result.evals[-1].get("test") if result.evals else None
    print(f"\nrun folder: {result.run_dir}" + (f"; test accuracy {test['accuracy']:.2%}" if test else ""))
    print(f'try:   scratchllm classify --checkpoint {result.run_dir} "You won a free prize, call now!"')
    return 0
