"""Serving: an OpenAI-compatible HTTP server and a web chat page on top of the generation engine."""
