"""Chat templates: the built-in GPT-2 transcript, custom Jinja2 files, and the sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt2serve.server.api.chat_template import ChatTemplate, ChatTemplateError
from gpt2serve.server.api.protocol import ChatMessage

MESSAGES = [
    ChatMessage(role="system", content="You are terse."),
    ChatMessage(role="user", content="Hi"),
    ChatMessage(role="assistant", content="Hello."),
    ChatMessage(
        role="user",
        content=[{"type": "text", "text": "How "}, {"type": "text", "text": "are you?"}],
    ),
]


def test_default_template_renders_a_transcript() -> None:
    text = ChatTemplate().render(MESSAGES)
    assert text == "You are terse.\n\nUser: Hi\nAssistant: Hello.\nUser: How are you?\nAssistant:"
    assert not ChatTemplate().render(MESSAGES, add_generation_prompt=False).endswith("Assistant:")


def test_template_from_file(tmp_path: Path) -> None:
    path = tmp_path / "chatml.jinja"
    path.write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    text = ChatTemplate.from_file(path).render(MESSAGES[:2])
    assert text == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_sandbox_blocks_python_internals() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError):
        template.render(MESSAGES)


def test_raise_exception_and_syntax_errors() -> None:
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        ChatTemplate("{{ raise_exception('roles must alternate') }}").render(MESSAGES)
    with pytest.raises(ChatTemplateError, match="invalid chat template"):
        ChatTemplate("{% for %}")


def test_non_text_parts_are_rejected() -> None:
    message = ChatMessage(role="user", content=[{"type": "image_url", "image_url": {"url": "x"}}])
    with pytest.raises(ValueError, match="only text"):
        ChatTemplate().render([message])


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("{% for i in range(100001) %}x{% endfor %}", "range items"),  # OverflowError before
        (
            "{% for i in range(3000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}",
            "range items",
        ),
        ("{{ 'ab' * 10**8 }}", "size limit"),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
            "{% endfor %}{{ ns.s }}",
            "size limit",
        ),
        ("{{ 7 ** 100000 }}", "exponent"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    ],
)
def test_render_limits_fail_as_template_errors(source: str, fragment: str) -> None:
    """A template's runaway work or crash is its own clear error, never a 500 or a hang."""
    with pytest.raises(ChatTemplateError, match=fragment):
        ChatTemplate(source).render(MESSAGES)


@pytest.mark.parametrize(
    "source", ["{% include 'other.jinja' %}", "{% import 'm.jinja' as m %}", "{% extends 'b' %}"]
)
def test_templates_that_load_files_are_refused_up_front(source: str) -> None:
    """No loader exists (TypeError at render before): refuse at load, naming the tag."""
    with pytest.raises(ChatTemplateError, match="is not supported"):
        ChatTemplate(source)


def test_loops_within_the_budget_still_render() -> None:
    text = ChatTemplate("{% for i in range(3) %}{{ i }}{% endfor %}{{ 'ab' * 2 }}").render(MESSAGES)
    assert text == "012abab"


def test_a_template_file_declares_its_turn_stops_in_a_comment(tmp_path: Path) -> None:
    source = '{# gpt2serve: {"stop": ["\\n### Human:", "<END>"]} #}{{ messages[0].content }}'
    path = tmp_path / "declared.jinja"
    path.write_text(source)
    template = ChatTemplate.from_file(path)
    assert template.stop == ["\n### Human:", "<END>"]
    assert template.render(MESSAGES) == "You are terse."  # the comment renders as nothing
    assert ChatTemplate.from_file(path, stop=["X"]).stop == ["X"]  # --chat-template-stop wins
    assert ChatTemplate.from_file(path, stop=[]).stop == []


@pytest.mark.parametrize(
    "metadata", ['{"stop": "one"}', '{"stop": [""]}', "{not json}", '["\\n"]', '{"stop": [1]}']
)
def test_bad_template_stop_metadata_is_a_clear_error(metadata: str) -> None:
    with pytest.raises(ChatTemplateError, match="metadata"):
        ChatTemplate("{# gpt2serve: " + metadata + " #}{{ messages }}")
