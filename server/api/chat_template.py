"""Render chat messages into a GPT-2 prompt: a plain built-in template, or a Jinja2 file."""

from __future__ import annotations

from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gpt2serve.server.api.protocol import ChatMessage

# GPT-2 was never chat-tuned; a transcript with role labels is what it continues best.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message.role == 'system' or message.role == 'developer' %}{{ message.content }}\n\n"
    "{% else %}{{ message.role | capitalize }}: {{ message.content }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class ChatTemplateError(ValueError):
    """The template could not render these messages."""


class ChatTemplate:
    """A Jinja2 chat template rendered in a sandbox (templates are user-supplied code)."""

    def __init__(self, source: str = DEFAULT_CHAT_TEMPLATE) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self.template = env.from_string(source)
        except TemplateError as exc:
            raise ChatTemplateError(f"invalid chat template: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> ChatTemplate:
        """Load a template file (HF/vLLM style Jinja2)."""
        return cls(Path(path).read_text())

    def render(self, messages: list[ChatMessage], add_generation_prompt: bool = True) -> str:
        """The prompt text for these messages."""
        plain = [{"role": m.role, "content": m.text(), "name": m.name} for m in messages]
        try:
            return self.template.render(
                messages=plain,
                add_generation_prompt=add_generation_prompt,
                bos_token="<|endoftext|>",
                eos_token="<|endoftext|>",
            )
        except TemplateError as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from exc


def _raise(message: str) -> None:
    raise ChatTemplateError(message)
