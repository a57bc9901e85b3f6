"""Checkpoints: name mapping to/from HuggingFace, and (de)serialising our run folders."""
