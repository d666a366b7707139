"""sparta.tasks.chat: token ids and loss masks of every data format, with SmolLM2-like, Llama-3-like and plain
templates on a word-level tokenizer; prompts, references, the pad == end-of-turn case and the alignment errors."""

from __future__ import annotations

import pytest
from sftkit import GLUED, LLAMA3, REWRITES, SMOL, lm_task, targets, tokens, word_tokenizer

from sparta.errors import SpartaError
from sparta.tasks import (
    encode_example,
    filter_by_length,
    format_input,
    prompt_ids,
    reference_text,
    render_messages,
)
from sparta.tasks.chat import encode_text

TWO_TURNS = [
    {"role": "user", "content": "what is 2 + 2"},
    {"role": "assistant", "content": "it is 4"},
    {"role": "user", "content": "thanks"},
    {"role": "assistant", "content": "bye"},
]
CHAT = lm_task()
EXAMPLE = {"messages": TWO_TURNS}


def test_smollm2_template_multi_turn_targets_are_the_replies_and_their_end_of_turn():
    tok = word_tokenizer(SMOL)
    ids, mask = encode_example(CHAT, EXAMPLE, tok, instruct=True)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    assert encode_text(tok, tok.apply_chat_template(TWO_TURNS, tokenize=False)) == ids  # the template, as is
    assert tokens(tok, ids)[:9] == ["<|im_start|>", "system", "\n", "You", "are", "a", "helpful", "bot", "."]
    # the "\n" ChatML writes after <|im_end|> is not a target: generation stops at <|im_end|>
    assert targets(tok, ids, mask) == ["it", "is", "4", "<|im_end|>", "bye", "<|im_end|>"]
    assert mask[0] == 0 and mask[-1] == 0 and tokens(tok, ids)[-1] == "\n"


def test_end_of_turn_that_is_also_the_pad_token_carries_loss():
    """SmolLM2 pads with <|im_end|>: the mask comes from positions, so the replies' <|im_end|> stay targets."""
    tok = word_tokenizer(SMOL, pad="<|im_end|>")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.pad_token_id == end
    ids, mask = encode_example(CHAT, EXAMPLE, tok, instruct=True)
    # system, user, assistant, user, assistant turns each end with <|im_end|>: the assistant ones are targets
    assert [m for i, m in zip(ids, mask, strict=True) if i == end] == [0, 0, 1, 0, 1]
    assert targets(tok, ids, mask) == ["it", "is", "4", "<|im_end|>", "bye", "<|im_end|>"]


def test_llama3_template():
    tok = word_tokenizer(LLAMA3, bos="<|begin_of_text|>")
    ids, mask = encode_example(CHAT, EXAMPLE, tok, instruct=True)
    assert tokens(tok, ids)[:4] == ["<|begin_of_text|>", "<|start_header_id|>", "user", "<|end_header_id|>"]
    assert targets(tok, ids, mask) == ["it", "is", "4", "<|eot_id|>", "bye", "<|eot_id|>"]
    p = prompt_ids(CHAT, EXAMPLE, tok, instruct=True)
    assert tokens(tok, p)[-5:] == ["<|start_header_id|>", "assistant", "<|end_header_id|>", "\n", "\n"]
    assert ids[: len(p)] == p and mask[len(p)] == 1 and tokens(tok, ids)[len(p)] == "bye"


@pytest.mark.parametrize(("template", "end"), [(SMOL, "<|im_end|>"), (LLAMA3, "<|eot_id|>")])
def test_prompt_ids_end_with_the_generation_prompt_and_start_the_encoding(template, end):
    tok = word_tokenizer(template, bos="<|begin_of_text|>")
    ids, mask = encode_example(CHAT, EXAMPLE, tok, instruct=True)
    p = prompt_ids(CHAT, EXAMPLE, tok, instruct=True)
    generation_prompt = tok.apply_chat_template(TWO_TURNS[:3], tokenize=False, add_generation_prompt=True)
    assert p == encode_text(tok, generation_prompt) and ids[: len(p)] == p
    # the prompt holds the first reply's targets, and the last reply starts right after it
    assert sum(mask[: len(p)]) == 4 and targets(tok, ids[len(p) :], mask[len(p) :]) == ["bye", end]
    assert reference_text(CHAT, EXAMPLE) == "bye"
    assert format_input(CHAT, EXAMPLE, tok, instruct=True) == generation_prompt


def test_base_model_template():
    tok = word_tokenizer(SMOL, adds_bos=True)  # a chat template, but the model is treated as a base model
    ids, mask = encode_example(CHAT, EXAMPLE, tok, instruct=False)
    text = render_messages(TWO_TURNS, tok, instruct=False, add_generation_prompt=False)
    assert (
        text
        == "<s>### User:\nwhat is 2 + 2\n\n### Assistant:\nit is 4</s>\n\n### User:\nthanks\n\n### Assistant:\nbye</s>"
    )
    assert encode_text(tok, text) == ids and tokens(tok, ids)[0] == "<s>"
    assert targets(tok, ids, mask) == ["it", "is", "4", "</s>", "bye", "</s>"]
    p = prompt_ids(CHAT, EXAMPLE, tok, instruct=False)
    assert ids[: len(p)] == p and tokens(tok, p)[-4:] == ["###", "Assistant", ":", "\n"]
    assert mask[len(p)] == 1 and tokens(tok, ids)[len(p)] == "bye"
    # a tokenizer that adds no BOS by itself gets none
    plain = word_tokenizer()
    assert (
        render_messages(TWO_TURNS[:1], plain, False, add_generation_prompt=True)
        == "### User:\nwhat is 2 + 2\n\n### Assistant:\n"
    )


def test_prompt_completion_and_the_system_prompt():
    tok = word_tokenizer(SMOL)
    task, example = lm_task(format="prompt-completion"), {"prompt": "what is 2 + 2", "completion": "it is 4"}
    ids, mask = encode_example(task, example, tok, instruct=True)
    assert "helpful" in tokens(tok, ids)  # no system prompt given: the template's default
    assert targets(tok, ids, mask) == ["it", "is", "4", "<|im_end|>"]
    assert reference_text(task, example) == "it is 4"
    # the task's system prompt replaces the template's default ...
    tutor = lm_task(format="prompt-completion", system_prompt="You are a tutor .")
    ids, mask = encode_example(tutor, example, tok, instruct=True)
    assert "tutor" in tokens(tok, ids) and "helpful" not in tokens(tok, ids)
    assert targets(tok, ids, mask) == ["it", "is", "4", "<|im_end|>"]
    # ... but not a conversation's own system turn
    own = {"messages": [{"role": "system", "content": "hi there"}, *TWO_TURNS[:2]]}
    ids, _ = encode_example(lm_task(system_prompt="You are a tutor ."), own, tok, instruct=True)
    assert tokens(tok, ids)[:5] == ["<|im_start|>", "system", "\n", "hi", "there"] and "tutor" not in tokens(
        tok, ids
    )
    # the plain template shows a system prompt only when there is one
    ids, mask = encode_example(tutor, example, tok, instruct=False)
    assert tokens(tok, ids)[:8] == ["###", "System", ":", "\n", "You", "are", "a", "tutor"]
    assert targets(tok, ids, mask) == ["it", "is", "4", "</s>"]


@pytest.mark.parametrize("adds_bos", [False, True])
def test_text_rows_are_all_targets_but_the_first_token(adds_bos):
    tok = word_tokenizer(SMOL, adds_bos=adds_bos)
    task, example = lm_task(format="text"), {"text": "the cat sat"}
    for instruct in (True, False):  # plain text takes no template either way
        ids, mask = encode_example(task, example, tok, instruct=instruct)
        assert tokens(tok, ids) == ["<s>"] * adds_bos + ["the", "cat", "sat", "</s>"]
        assert mask == [0] + [1] * (len(ids) - 1)
        assert prompt_ids(task, example, tok, instruct) == ids[:1]
    assert reference_text(task, example) == "the cat sat"


def test_loss_on_all():
    tok = word_tokenizer(SMOL)
    ids, mask = encode_example(CHAT, EXAMPLE, tok, instruct=True, loss_on="all")
    assert ids == encode_example(CHAT, EXAMPLE, tok, instruct=True)[0] and mask == [0] + [1] * (len(ids) - 1)
    with pytest.raises(SpartaError, match="loss_on must be one of assistant, all, got 'prompt'"):
        encode_example(CHAT, EXAMPLE, tok, instruct=True, loss_on="prompt")


def test_a_token_across_the_reply_boundary_is_realigned_by_offsets():
    """ "assistant:" then "= 4": the prompt ends in ":", the whole conversation has ":=" there."""
    tok = word_tokenizer(GLUED)
    example = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "= 4"}]}
    ids, mask = encode_example(CHAT, example, tok, instruct=True)
    assert tokens(tok, ids) == ["user", ":", "hi", "\n", "assistant", ":=", "4", "\n"]
    assert targets(tok, ids, mask) == [":=", "4"]  # the merged token holds the reply's first character
    p = prompt_ids(CHAT, example, tok, instruct=True)
    assert tokens(tok, p)[-2:] == ["assistant", ":"] and ids[: len(p)] != p


def test_templates_that_cannot_be_aligned_are_clear_errors():
    tok = word_tokenizer(REWRITES)
    ids, mask = encode_example(CHAT, {"messages": TWO_TURNS[:2]}, tok, instruct=True)  # one reply: fine
    assert targets(tok, ids, mask) == ["it", "is", "4", "<|im_end|>"]
    with pytest.raises(SpartaError, match="renders turn 2 differently once later turns follow"):
        encode_example(CHAT, EXAMPLE, tok, instruct=True)
    first = {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "hello"}]}
    with pytest.raises(
        SpartaError, match="starts with an assistant turn; the chat template .* needs a system or user"
    ):
        encode_example(CHAT, first, word_tokenizer(SMOL), instruct=True)
    ids, mask = encode_example(CHAT, first, word_tokenizer(), instruct=False)  # the plain template can
    assert targets(word_tokenizer(), ids, mask) == ["hi", "</s>"]
    with pytest.raises(SpartaError, match="needs a tokenizer with a chat template"):
        encode_example(CHAT, EXAMPLE, word_tokenizer(), instruct=True)


def test_render_messages():
    tok = word_tokenizer(SMOL)
    assert render_messages([{"role": "user", "content": "hi"}], tok, True, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful bot .<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(
        SpartaError, match="turn 1 of 'messages' has role 'tool'; roles must be system, user, assistant"
    ):
        render_messages([{"role": "tool", "content": "hi"}], tok, True, add_generation_prompt=True)


def test_length_filter_counts_the_whole_encoding():
    tok = word_tokenizer(SMOL)
    short = {"messages": TWO_TURNS[:2]}
    n_short, n_long = (len(encode_example(CHAT, e, tok, True)[0]) for e in (short, EXAMPLE))
    assert n_short < n_long
    assert filter_by_length(CHAT, [EXAMPLE, short], tok, instruct=True, max_length=n_short) == [short]
    assert filter_by_length(CHAT, [EXAMPLE, short], tok, instruct=True, max_length=n_long) == [EXAMPLE, short]
