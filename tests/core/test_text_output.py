"""Stop strings with hold-back over real GPT-2 tokens."""

from __future__ import annotations

from gpt2serve.server.core.text_output import ChoiceText


def feed(tokenizer, text: str, stop: list[str], min_tokens: int = 0):
    choice = ChoiceText(tokenizer, stop, min_tokens)
    deltas = []
    for token in tokenizer.encode(text):
        delta = choice.add_token(token)
        deltas.append(delta.text)
        if delta.stop_string is not None:
            return deltas, delta.stop_string
    deltas.append(choice.finish())
    return deltas, None


def test_stop_string_spanning_tokens_is_cut_and_never_leaks(tokenizer) -> None:
    text = "The quick brown fox jumps over the lazy dog. The end"
    deltas, matched = feed(tokenizer, text, ["x jumps ov"])
    assert matched == "x jumps ov"
    assert "".join(deltas) == "The quick brown fo"
    for i in range(len(deltas)):
        assert "x j" not in "".join(deltas[: i + 1])


def test_partial_match_is_released_when_it_turns_out_not_to_be_a_stop(tokenizer) -> None:
    text = "abc abd abe"
    deltas, matched = feed(tokenizer, text, ["abf"])
    assert matched is None and "".join(deltas) == text


def test_earliest_of_several_stop_strings_wins(tokenizer) -> None:
    deltas, matched = feed(tokenizer, "one two three four", ["four", "two"])
    assert matched == "two" and "".join(deltas) == "one "


def test_stop_strings_ignored_until_min_tokens(tokenizer) -> None:
    text = "stop here, then stop again"
    n_first = len(tokenizer.encode("stop"))
    deltas, matched = feed(tokenizer, text, ["stop"], min_tokens=n_first + 1)
    assert matched == "stop" and "".join(deltas) == "stop here, then "


def test_multibyte_characters_are_never_split(tokenizer) -> None:
    text = "emoji 🤗 and 日本語 text"
    deltas, matched = feed(tokenizer, text, ["zzz"])
    assert matched is None and "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
