"""LLM backends (local transformers model, OpenAI-compatible endpoint); choose one with `explain.backends.make_backend`."""
