"""Turning an example into model input text: raw text for base models, a chat-wrapped instruction for instruct ones."""

from __future__ import annotations

import re
import string

from sparta.errors import SpartaError
from sparta.tasks.chat import prompt_text
from sparta.tasks.specs import LANGUAGE_MODELLING, TaskSpec, get_task

LETTERS = string.ascii_uppercase


def field_title(field: str) -> str:
    """Display name of a field: "sentence1" -> "Sentence 1", "premise" -> "Premise"."""
    m = re.fullmatch(r"(.*?)_?(\d+)", field)
    words = f"{m.group(1)} {m.group(2)}" if m else field
    return words.replace("_", " ").strip().capitalize()


def lettered(choices) -> str:
    """Multiple-choice options as "A. ...\\nB. ..." lines."""
    return "\n".join(f"{LETTERS[i]}. {str(c).strip()}" for i, c in enumerate(choices))


def format_input(
    task: str | TaskSpec,
    example: dict,
    tokenizer=None,
    *,
    instruct: bool = False,
    template: str | None = None,
) -> str:
    """The input text for one example.

    Base models get the raw text (several fields as labelled lines, "Sentence 1: ...\\nSentence 2: ..."; MMLU the
    question and lettered choices). Instruct models get the task instruction and that text as one user turn,
    wrapped with ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``. ``template`` is a str.format
    string over the example's fields (plus {instruction} and, for list fields such as MMLU's, {choices} as lettered
    lines) that replaces the default text, e.g. "Review: {text}\\nIs it positive? Answer Yes or No.".
    A language-modelling task's input is its prompt (`sparta.tasks.chat.prompt_text`: the conversation before the
    last assistant turn, with the generation prompt); ``template`` does not apply to it.
    """
    task = get_task(task)
    if task.objective == LANGUAGE_MODELLING:
        return prompt_text(task, example, tokenizer, instruct)
    values = field_texts(task, example)
    if template is not None:
        try:
            body = template.format(**values, instruction=task.instruction)
        except (KeyError, IndexError, ValueError) as e:
            raise SpartaError(
                f"prompt template refers to {e}, which is not a field; available: {', '.join(values)}, instruction"
            ) from None
    else:
        body = _body(task, values)
        if instruct:
            body = (
                f"{body}\n{task.instruction}" if task.instruction_after else f"{task.instruction}\n\n{body}"
            )
    if not instruct:
        return body
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", None) or "no tokenizer"
        raise SpartaError(
            f"instruct formatting needs a tokenizer with a chat template ({name} has none); use a base-model format instead"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
    )


def field_texts(task: TaskSpec, example: dict) -> dict[str, str]:
    """Every field of the example as display text (lists as lettered lines), checking the task's text fields exist."""
    for f in task.text_fields:
        if f not in example:
            raise SpartaError(
                f"example has no field {f!r} (task {task.name}); its fields are {', '.join(example)}"
            )
    return {
        k: lettered(v) if isinstance(v, list | tuple) else ("" if v is None else str(v).strip())
        for k, v in example.items()
    }


def _body(task: TaskSpec, values: dict[str, str]) -> str:
    fields = task.text_fields
    if len(fields) == 1:
        return values[fields[0]]
    if task.name == "mmlu":
        return "\n".join(values[f] for f in fields)
    return "\n".join(f"{field_title(f)}: {values[f]}" for f in fields)
