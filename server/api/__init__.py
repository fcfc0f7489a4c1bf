"""HTTP only: the FastAPI app, OpenAI protocol, serving, SSE, errors, metrics, chat templates.

May import: core, engine, config, gpt2serve.model.tokenizer and FastAPI. Never torch, the worker
or the kernels.
"""
