"""scratchllm: large language models built from scratch in PyTorch.

The package is split by concern (tokenizers, data, models, generation, training, checkpoints, cli).
Nothing heavy is imported here so that `scratchllm --help` stays instant: import the subpackage you need.
"""

__version__ = "0.1.0"
