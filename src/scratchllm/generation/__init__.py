"""Generation: sampling strategies, the KV-cache prefill/decode loop, streaming, chat templates."""
