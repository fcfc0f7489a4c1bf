"""The torch side: model runner, KV-cache sizing, CUDA graphs, sampler, prompt logprobs.

May import: core, gpt2serve.model, gpt2serve.kernels and torch. Never engine, api or FastAPI.
"""
