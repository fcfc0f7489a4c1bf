"""A load generator for any OpenAI-compatible server: TTFT, inter-token latency, throughput.

It talks HTTP only: may import nothing else of gpt2serve, and not torch.
"""
