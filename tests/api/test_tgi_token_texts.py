"""A TGI delta of several tokens (a beam search's answer) gives each token its own text."""

from __future__ import annotations

from gpt2serve.server.api.serving_tgi import split_text


def test_each_token_gets_its_own_text(tokenizer) -> None:
    ids = tokenizer.encode(" Hello world, again")
    assert split_text(tokenizer, ids, tokenizer.decode(ids)) == [tokenizer.decode([t]) for t in ids]


def test_a_character_split_over_tokens_goes_to_the_token_that_completes_it(tokenizer) -> None:
    ids = tokenizer.encode(" café 猫 ok")
    texts = split_text(tokenizer, ids, tokenizer.decode(ids))
    assert "".join(texts) == " café 猫 ok" and "\ufffd" not in "".join(texts)
    assert "" in texts  # 猫 takes more than one byte-level token: the first ones carry nothing


def test_a_stop_string_cut_leaves_later_tokens_empty(tokenizer) -> None:
    ids = tokenizer.encode(" one two three four")
    texts = split_text(tokenizer, ids, " one tw")  # a stop string "o three" cut the rest
    assert texts == [" one", " tw", "", ""]


def test_special_tokens_carry_no_text(tokenizer) -> None:
    ids = [*tokenizer.encode(" end"), tokenizer.eos_token_id]
    assert split_text(tokenizer, ids, " end") == [" end", ""]


def test_a_single_token_delta_keeps_its_text(tokenizer) -> None:
    assert split_text(tokenizer, [50256], "") == [""]
    assert split_text(tokenizer, [11], ",") == [","]
