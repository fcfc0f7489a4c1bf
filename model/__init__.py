"""GPT-2 over a paged KV cache: config, layers, weights, tokenizer.

May import: gpt2serve.kernels and torch. Never gpt2serve.server.
"""
