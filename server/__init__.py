"""Serving GPT-2 over HTTP, in layers that import one way: core <- worker <- engine <- api.

`config` (the settings object) and `cli` (the command) sit beside the layers. May import
gpt2serve.model and gpt2serve.kernels; never loadtest or benchmarks.
"""
