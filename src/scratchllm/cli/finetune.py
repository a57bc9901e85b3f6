"""`scratchllm finetune classify|instruct|dpo`: a text classifier (book ch. 6), an instruction-following model
(book ch. 7), each with LoRA adapters from appendix E (--lora), or a preference-tuned one (DPO).

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
    from scratchllm.training.config import ClassifyConfig, DPOConfig, InstructConfig

    p = sub.add_parser("finetune", help="fine-tune a model: classify, instruct or dpo", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    tasks = p.add_subparsers(dest="action", metavar="TASK", required=True)
    for name, help_text, doc, cls, handler in (
        ("classify", "text classification (book ch. 6)", __doc__, ClassifyConfig, run_classify),
        ("instruct", "instruction fine-tuning, full or LoRA (book ch. 7, appendix E)", INSTRUCT_DOC, InstructConfig,
         run_instruct),
        ("dpo", "preference tuning with DPO (book ch. 7 bonus)", DPO_DOC, DPOConfig, run_dpo),
    ):  # fmt: skip
        t = tasks.add_parser(name, help=help_text, description=doc,
                             formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        t.add_argument("--config", default=None, help=f"YAML file with {cls.__name__} fields")
        t.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its last checkpoint")
        t.add_argument("--overwrite", action="store_true", help="replace a non-empty --out-dir with the new run")
        add_config_flags(t, cls)
        t.set_defaults(handler=handler)


DPO_DOC = """Direct preference optimisation (book ch. 7 bonus) on the shared training loop.

Starts from an instruction-tuned --checkpoint (also the frozen reference; with --lora, the reference is the
model with its adapters off), reads records with instruction/input plus `chosen` and `rejected` responses
(default `book-preferences`, the book's file, downloaded once), and logs loss, chosen/rejected rewards,
margin and reward accuracy. --logp mean (the book; rewards unscaled) or sum (TRL; rewards times beta).
configs/dpo-book.yaml is the book's recipe.
"""


def run_dpo(args: argparse.Namespace) -> int:
    from scratchllm.cli.flags import config_file_for, config_overrides, is_main_process
    from scratchllm.training.config import DPOConfig, build_config
    from scratchllm.training.dpo import finetune_dpo

    cfg = build_config(config_file_for(args, DPOConfig), DPOConfig, **config_overrides(args))
    result = finetune_dpo(cfg, resume=args.resume, overwrite=args.overwrite)
    if is_main_process():
        print(f"\nrun folder: {result.run_dir}")
    return 0


INSTRUCT_DOC = """Instruction fine-tuning (book ch. 7) on the shared training loop.

Starts from any --checkpoint, reads JSON/JSONL records (instruction/input/output, or chat `messages`; default
`book-instructions`, the book's 1,100 records, downloaded once), formats them with --style (alpaca as the
book, phi3, chatml, llama3, plain), splits 85/10/5 in file order and trains every weight, or LoRA adapters
with --lora (--lora-rank, --lora-alpha, --lora-targets). Prints validation responses while training and
writes the test split's responses to test-responses.json at the end. The run folder remembers the style:
`generate`, `chat` and `serve` use it without flags. configs/instruct-book.yaml is the book's recipe.
"""


def run_instruct(args: argparse.Namespace) -> int:
    from scratchllm.cli.flags import config_file_for, config_overrides, is_main_process
    from scratchllm.training.config import InstructConfig, build_config
    from scratchllm.training.instruct import finetune_instruct

    cfg = build_config(config_file_for(args, InstructConfig), InstructConfig, **config_overrides(args))
    result = finetune_instruct(cfg, resume=args.resume, overwrite=args.overwrite)
    if is_main_process():
        last = result.evals[-1] if result.evals else {}
        loss = f"; validation loss {last['val_loss']:.3f}" if "val_loss" in last else ""
        print(f"\nrun folder: {result.run_dir}{loss}")
        print(f"try:   scratchllm chat --checkpoint {result.run_dir}")
    return 0


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
