"""One exception type for user-facing problems.

The CLI prints a `ScratchLLMError` as a single line (no traceback) and exits with status 2, so every
message must say which file or field is wrong and what was expected.
"""


class ScratchLLMError(Exception):
    """A problem with the user's input (a file, a flag, a config field), not a bug in scratchllm."""
