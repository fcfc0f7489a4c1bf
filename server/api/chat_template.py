"""Render chat messages into a GPT-2 prompt: a plain built-in template, or a Jinja2 file."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, TemplateError, nodes
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


MAX_RANGE_ITEMS = 10_000  # every range() of one render together
MAX_RENDERED_CHARS = 4 * 1024 * 1024  # a string or list built by `*` or `~` in a render
MAX_EXPONENT = 1024


DEFAULT_CHAT_STOP = ("\nUser:",)

# A template file declares its own turn stops in a comment, which renders as nothing:
#   {# gpt2serve: {"stop": ["\n### Human:"]} #}
_METADATA_COMMENT = re.compile(r"\{#-?\s*gpt2serve:(.*?)-?#\}", re.DOTALL)


class ChatTemplateError(ValueError):
    """The template could not render these messages."""


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus bounds on the operators that can build huge values."""

    intercepted_binops = frozenset(["*", "+", "**"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        size = _result_size(operator, left, right)
        if size > MAX_RENDERED_CHARS:
            raise ChatTemplateError("chat template built a value over the size limit")
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise ChatTemplateError(f"chat template exponent over {MAX_EXPONENT}")
        return super().call_binop(context, operator, left, right)


def _result_size(operator: str, left: Any, right: Any) -> int:
    """How long a sequence `left <operator> right` would build (0 for numbers)."""
    sequences = str | list | tuple
    if operator == "+" and isinstance(left, sequences) and isinstance(right, sequences):
        return len(left) + len(right)
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, sequences) and isinstance(count, int):
                return len(seq) * max(count, 0)
    return 0


def _find_loader_tags(source: str, env: Environment) -> list[str]:
    """`include` / `import` / `extends` tags: a server template has no files to load."""
    tree = env.parse(source)
    found = [
        n for n in tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends))
    ]
    return [type(node).__name__.lower() for node in found]


class ChatTemplate:
    """A Jinja2 chat template rendered in a sandbox (templates are user-supplied code)."""

    def __init__(self, source: str = DEFAULT_CHAT_TEMPLATE, stop: list[str] | None = None) -> None:
        # The strings that end the assistant's turn (added to every chat request's stop, not
        # shown to the client): the caller's (--chat-template-stop), else the template's own
        # metadata, else the built-in transcript's next "User:" line.
        declared = template_stop_metadata(source)
        if stop is not None:
            self.stop = list(stop)
        elif declared is not None:
            self.stop = declared
        else:
            self.stop = list(DEFAULT_CHAT_STOP) if source == DEFAULT_CHAT_TEMPLATE else []
        env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            loader_tags = _find_loader_tags(source, env)
            self.template = env.from_string(source)
        except TemplateError as exc:
            raise ChatTemplateError(f"invalid chat template: {exc}") from exc
        if loader_tags:
            raise ChatTemplateError(
                f"invalid chat template: {', '.join(sorted(set(loader_tags)))} is not supported "
                "(a chat template is one self-contained file)"
            )

    @classmethod
    def from_file(cls, path: str | Path, stop: list[str] | None = None) -> ChatTemplate:
        """Load a template file (HF/vLLM style Jinja2)."""
        return cls(Path(path).read_text(), stop)

    def render(self, messages: list[ChatMessage], add_generation_prompt: bool = True) -> str:
        """The prompt text for these messages."""
        plain = [{"role": m.role, "content": m.text(), "name": m.name} for m in messages]
        try:
            text = self.template.render(
                messages=plain,
                add_generation_prompt=add_generation_prompt,
                bos_token="<|endoftext|>",
                eos_token="<|endoftext|>",
                range=_budgeted_range(MAX_RANGE_ITEMS),
            )
        except ChatTemplateError:
            raise
        except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError,
                AttributeError, RecursionError, MemoryError) as exc:  # fmt: skip
            # A template is code: whatever it raises while rendering is its failure, never a 500.
            raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc
        if len(text) > MAX_RENDERED_CHARS:
            raise ChatTemplateError("chat template rendered a prompt over the size limit")
        return text


def template_stop_metadata(source: str) -> list[str] | None:
    """The stop strings a `{# gpt2serve: {"stop": [...]} #}` comment declares, or None."""
    match = _METADATA_COMMENT.search(source)
    if match is None:
        return None
    try:
        metadata = json.loads(match.group(1))
    except json.JSONDecodeError as exc:
        raise ChatTemplateError(f"invalid gpt2serve metadata in chat template: {exc}") from exc
    stop = metadata.get("stop") if isinstance(metadata, dict) else None
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ChatTemplateError(
            'chat template metadata must be {"stop": [non-empty strings]}, got '
            f"{match.group(1).strip()[:200]}"
        )
    return stop


def _budgeted_range(budget: int) -> Callable[..., range]:
    """`range` whose calls in one render may yield at most `budget` items together."""
    remaining = [budget]

    def bounded_range(*args: int) -> range:
        items = range(*args)
        remaining[0] -= len(items)
        if remaining[0] < 0:
            raise ChatTemplateError(f"chat template iterated over more than {budget} range items")
        return items

    return bounded_range


def _raise(message: str) -> None:
    raise ChatTemplateError(message)
