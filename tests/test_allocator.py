"""The CPU allocator setting: after it, a training-like loop reuses freed pages instead of faulting in new ones."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import resource, sys
import torch
from scratchllm.allocator import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():  # a training step's pattern: several large tensors alive together, all freed at the end
    held = [torch.ones(n * 2**20) for n in (64, 16, 16, 8, 40)]
    del held
for _ in range(2):
    step()
before = faults()
for _ in range(3):
    step()
print(faults() - before)
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_reuses_pages():
    # Each step allocates 576 MB (147,456 pages of 4 KiB); glibc's default maps and faults them in every step.
    default, tuned = _page_faults("default"), _page_faults("tuned")
    assert default > 3 * 100_000
    assert tuned < default / 3
