"""Chat formats and loss masks for instruction fine-tuning: one example -> its token ids and a 0/1 loss mask.

**Templates.** Instruct models (``instruct=True``: the tokenizer has a chat template) get their own template.
Base models get a plain one, in which every turn is a header line and its text, turns are separated by a blank
line, and each assistant reply ends with the tokenizer's EOS token (what teaches a base model to stop)::

    ### System:
    {system}

    ### User:
    {question}

    ### Assistant:
    {answer}</s>

(the BOS token first when the tokenizer adds one by itself). ``text`` rows get no template: their text, the BOS
token when the tokenizer adds one, and the EOS token.

**System prompt.** A conversation's own system turn is kept. Otherwise the task's ``system_prompt`` is put first
when the task has one; else the template decides: SmolLM2's adds its default ("You are a helpful AI assistant
named SmolLM, trained by Hugging Face"), Llama 3's and the plain template add none.

**Loss tokens.** ``mask[i] == 1`` means token i is a training target, predicted from the tokens before it (the
loss shifts). With ``loss_on="assistant"`` (the default) the targets are every assistant turn's tokens, its
end-of-turn token included (``<|im_end|>``, ``<|eot_id|>``, the plain template's EOS); never the system or user
turns, nor the header that opens an assistant turn (the generation prompt, which generation is given). Trailing
whitespace the template writes after the end-of-turn token (ChatML's ``\\n``) is not a target: generation stops at
the end-of-turn token and never writes it. ``loss_on="all"``: every token but the first. ``text`` rows: every
token but the first. The mask is decided by position, never by comparing token ids, so an end-of-turn token that
is also the pad token (SmolLM2's ``<|im_end|>``) carries loss.

**Finding the assistant turns.** Chat templates rarely mark the assistant's text (SmolLM2's has no
``{% generation %}`` block), so the conversation is rendered turn by turn: for assistant turn k, the
conversation before it with the generation prompt, and the conversation up to and including it. Each rendering
must be a prefix of the next and of the whole conversation (text); the tokens turn k adds are its targets.
Where the tokenization of a prefix is not a prefix of the whole one's (a BPE merge across the boundary), the
turn's characters are mapped onto the whole conversation's tokens by their offsets instead (a token that holds
any of the turn's characters is a target). A template that renders an earlier turn differently once later turns
follow (some drop past reasoning) cannot be aligned and is a SpartaError.
"""

from __future__ import annotations

from typing import Any

from sparta.errors import SpartaError
from sparta.tasks import rows
from sparta.tasks.gsm8k import strip_calculator
from sparta.tasks.specs import TaskSpec, get_task

LOSS_ON = ("assistant", "all")
PLAIN_HEADERS = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}
PLAIN_SEPARATOR = "\n\n"
Turns = list[dict[str, str]]


def conversation(task: str | TaskSpec, example: dict) -> Turns:
    """The example's turns as the model sees them: the task's system prompt first (when it has one and the
    conversation has none), assistant turns cleaned (GSM8K: calculator annotations stripped)."""
    task = get_task(task)
    turns = [dict(t) for t in rows.conversation(task, example)]
    for turn in turns:
        if turn["role"] == "assistant":
            turn["content"] = clean_target(task, turn["content"])
    if task.system_prompt is not None and not any(t["role"] == "system" for t in turns):
        turns.insert(0, {"role": "system", "content": task.system_prompt})
    return turns


def clean_target(task: TaskSpec, text: str) -> str:
    """An assistant turn as trained on: GSM8K-style answers lose their calculator annotations unless
    ``keep_calculator``; anything else is kept as it is."""
    if task.answer_parser == "gsm8k" and not task.keep_calculator:
        return strip_calculator(text)
    return text


def render_messages(messages: list[dict], tokenizer: Any, instruct: bool, add_generation_prompt: bool) -> str:
    """A list of {role, content} turns as text: the chat template for instruct models, the plain template for
    base models. Tokenize it with `encode_text` (no special tokens added: the text holds them)."""
    return _render(rows.messages(messages, training=False), tokenizer, instruct, add_generation_prompt)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of rendered text, adding no special tokens (the rendering holds those it needs)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_example(
    task: str | TaskSpec, example: dict, tokenizer: Any, instruct: bool, loss_on: str = "assistant"
) -> tuple[list[int], list[int]]:
    """(token ids of the whole example, 0/1 loss mask of the same length); see the module docstring."""
    task = get_task(task)
    if loss_on not in LOSS_ON:
        raise SpartaError(f"loss_on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")
    if task.format == rows.TEXT:
        ids = _text_ids(task, example, tokenizer)
        spans = [(1, len(ids))]
    else:
        ids, spans = assistant_spans(conversation(task, example), tokenizer, instruct)
    if loss_on == "all":
        spans = [(1, len(ids))]
    mask = [0] * len(ids)
    for start, end in spans:
        mask[start:end] = [1] * (end - start)
    return ids, mask


def prompt_ids(task: str | TaskSpec, example: dict, tokenizer: Any, instruct: bool) -> list[int]:
    """What generation starts from: the conversation before its last assistant turn, ending with the generation
    prompt. (A ``text`` row has no prompt: its first token, so that it stays a prefix of the encoding.)"""
    task = get_task(task)
    if task.format == rows.TEXT:
        return _text_ids(task, example, tokenizer)[:1]
    return encode_text(tokenizer, prompt_text(task, example, tokenizer, instruct))


def prompt_text(task: str | TaskSpec, example: dict, tokenizer: Any, instruct: bool) -> str:
    """The text of `prompt_ids` (a ``text`` row: its text, which has no prompt)."""
    task = get_task(task)
    if task.format == rows.TEXT:
        return rows.text_of(task, example)
    turns = conversation(task, example)
    last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
    _check_not_first(turns, last, tokenizer, instruct)
    return _render(turns[:last], tokenizer, instruct, add_generation_prompt=True)


def reference_text(task: str | TaskSpec, example: dict) -> str:
    """The text a generation is scored against: the last assistant turn (cleaned), or a ``text`` row's text."""
    task = get_task(task)
    if task.format == rows.TEXT:
        return rows.text_of(task, example)
    return [t for t in conversation(task, example) if t["role"] == "assistant"][-1]["content"]


def assistant_spans(turns: Turns, tokenizer: Any, instruct: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """(token ids of the conversation, [start, end) token range of each assistant turn's targets)."""
    full = _render(turns, tokenizer, instruct, add_generation_prompt=False)
    ids = encode_text(tokenizer, full)
    cache = {full: ids}

    def encoded(text: str) -> list[int]:
        if text not in cache:
            cache[text] = encode_text(tokenizer, text)
        return cache[text]

    offsets = None
    spans = []
    for k, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        _check_not_first(turns, k, tokenizer, instruct)
        before = _render(turns[:k], tokenizer, instruct, add_generation_prompt=True)
        upto = _render(turns[: k + 1], tokenizer, instruct, add_generation_prompt=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise SpartaError(
                f"the chat template of {_name(tokenizer)} renders turn {k + 1} differently once later turns "
                "follow (a rendering of the first turns is not the start of the whole conversation), so the "
                "assistant's tokens cannot be located; train with a template that keeps earlier turns as they are"
            )
        a, b = encoded(before), encoded(upto)
        if b[: len(a)] == a and ids[: len(b)] == b:
            start, end = len(a), len(b)
        else:  # the tokens of a prefix are not a prefix of the whole: re-align by character offsets
            offsets = offsets if offsets is not None else _offsets(tokenizer, full)
            start, end = _token_range(offsets, len(before), len(upto))
        if end <= start:
            raise SpartaError(
                f"the template of {_name(tokenizer)} renders assistant turn {k + 1} as no tokens"
            )
        spans.append((start, _trim_whitespace(tokenizer, ids, start, end)))
    return ids, spans


def _render(turns: Turns, tokenizer: Any, instruct: bool, add_generation_prompt: bool) -> str:
    if not instruct:
        return _plain(turns, tokenizer, add_generation_prompt)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise SpartaError(
            f"instruct formatting needs a tokenizer with a chat template ({_name(tokenizer)} has none); "
            "treat the model as a base model (the plain ### User / ### Assistant template) instead"
        )
    from jinja2 import TemplateError  # transformers renders chat templates with jinja2

    try:
        return tokenizer.apply_chat_template(
            turns, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as e:
        raise SpartaError(f"the chat template of {_name(tokenizer)} refused the conversation: {e}") from None


def _plain(turns: Turns, tokenizer: Any, add_generation_prompt: bool) -> str:
    """The base-model template of the module docstring."""
    eos = getattr(tokenizer, "eos_token", None) or ""
    parts = [
        PLAIN_HEADERS[t["role"]] + t["content"] + (eos if t["role"] == "assistant" else "") for t in turns
    ]
    if add_generation_prompt:
        parts.append(PLAIN_HEADERS["assistant"])
    return _bos_text(tokenizer) + PLAIN_SEPARATOR.join(parts)


def _text_ids(task: TaskSpec, example: dict, tokenizer: Any) -> list[int]:
    """A ``text`` row: BOS (when the tokenizer adds one), its tokens, EOS."""
    ids = encode_text(tokenizer, _bos_text(tokenizer) + rows.text_of(task, example))
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def _bos_text(tokenizer: Any) -> str:
    """The BOS token as text when the tokenizer puts it first by itself (Llama), else "" (GPT-2, SmolLM2): what
    a base model saw in pre-training, written into the text since the renderings are encoded without extras."""
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if bos is None or bos_id is None:
        return ""
    added = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bos if added[:1] == [bos_id] and plain[:1] != [bos_id] else ""


def _check_not_first(turns: Turns, k: int, tokenizer: Any, instruct: bool) -> None:
    """A chat template renders no empty conversation, so an assistant turn cannot come first (a system or user
    turn must precede it); the plain template has no such limit."""
    if instruct and k == 0:
        raise SpartaError(
            f"the conversation starts with an assistant turn; the chat template of {_name(tokenizer)} needs a "
            "system or user turn before it (add one, e.g. the question the reply answers)"
        )


def _offsets(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    if not getattr(tokenizer, "is_fast", False):
        raise SpartaError(
            f"the tokens of {_name(tokenizer)} for a conversation's first turns are not the start of its tokens "
            "for the whole conversation, and re-aligning them needs a fast tokenizer (character offsets)"
        )
    return list(tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])


def _token_range(offsets: list[tuple[int, int]], lo: int, hi: int) -> tuple[int, int]:
    """[first, last + 1) of the tokens holding any character of text[lo:hi]."""
    inside = [j for j, (a, b) in enumerate(offsets) if b > lo and a < hi and b > a]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)


def _trim_whitespace(tokenizer: Any, ids: list[int], start: int, end: int) -> int:
    """`end` moved back over whitespace-only tokens that end the turn (ChatML's "\\n" after <|im_end|>)."""
    while end - start > 1 and not tokenizer.decode([ids[end - 1]]).strip():
        end -= 1
    return end


def _name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", None) or "the tokenizer"
