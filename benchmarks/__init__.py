"""Offline benchmarks without HTTP: `python -m gpt2serve.benchmarks.engine` (the engine beside
Hugging Face transformers) and `python -m gpt2serve.benchmarks.kernels` (the Triton kernels).

May import any part of gpt2serve; nothing imports them.
"""
