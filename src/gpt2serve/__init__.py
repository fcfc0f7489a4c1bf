"""gpt2serve: an OpenAI-compatible GPT-2 inference server.

The parts live in the repository's top-level folders, mapped here by pyproject.toml:
`gpt2serve.kernels` (kernels/), `gpt2serve.model` (model/), `gpt2serve.server` (server/),
`gpt2serve.loadtest` (loadtest/) and `gpt2serve.benchmarks` (benchmarks/). Imports point one
way, kernels <- model <- server; loadtest speaks HTTP only (docs/ARCHITECTURE.md).
"""
