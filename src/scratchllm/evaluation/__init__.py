"""Evaluation: perplexity and bits per byte of a model on a text."""
