"""Generating text with a loaded causal LM: prompts (a string or a list of chat turns) rendered as in training,
then `sparta.objectives.generation.generate` (batched, left-padded, KV cache).

An instruct model's prompt goes through its chat template with the generation prompt appended (the task's system
prompt first, when the run's task has one and the turns bring none). A base model continues a plain string as
it is, unless it was fine-tuned on turns (its task's format is "messages" or "prompt-completion"): then the
string is a user turn, rendered in the plain template it was trained with. Rendered turns hold the special tokens
they need, so they are tokenised without adding any; a plain continuation gets the tokenizer's usual ones (BOS).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparta.errors import SpartaError
from sparta.objectives.generation import generate
from sparta.runs.loaded import Loaded

try:  # the SFT data layer's renderer (sparta.tasks.chat); without it, the tokenizer's own chat template
    from sparta.tasks.chat import render_messages
except ImportError:  # pragma: no cover - present once the SFT data layer is installed
    render_messages = None

Prompt = str | list[dict[str, str]]
ROLES = ("system", "user", "assistant")
TURN_FORMATS = ("messages", "prompt-completion")  # task formats whose examples are turns (not plain text)


def check_messages(messages: Any, where: str = "messages") -> list[dict[str, str]]:
    """`messages` if it is a non-empty list of {"role", "content"} turns, else a SpartaError saying what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise SpartaError(f"{where} must be a non-empty list of {{'role', 'content'}} turns")
    for i, turn in enumerate(messages):
        if (
            not isinstance(turn, dict)
            or turn.get("role") not in ROLES
            or not isinstance(turn.get("content"), str)
        ):
            raise SpartaError(
                f"{where}[{i}] must be an object with a role ({', '.join(ROLES)}) and a string content, got "
                f"{str(turn)[:80]}"
            )
    return messages


def read_prompts(path: str | Path) -> list[tuple[dict[str, Any], Prompt]]:
    """(record, prompt) for each line of a JSONL file: {"prompt": text} or {"messages": [turns]}, other fields kept
    (blank lines skipped); a SpartaError names the file and line of anything else."""
    path = Path(path)
    if not path.is_file():
        raise SpartaError(f"prompt file {path} does not exist")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SpartaError(f"{where} is not valid JSON: {err}") from None
        if isinstance(record, dict) and isinstance(record.get("prompt"), str):
            out.append((record, record["prompt"]))
        elif isinstance(record, dict) and "messages" in record:
            out.append((record, check_messages(record["messages"], f"{where}: messages")))
        else:
            raise SpartaError(
                f'{where} has neither a "prompt" string nor a "messages" list; write one JSON object a line, '
                'e.g. {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}'
            )
    if not out:
        raise SpartaError(f"prompt file {path} holds no prompts")
    return out


def _system_prompt(loaded: Loaded) -> str | None:
    if len(loaded.tasks) != 1:
        return None
    return getattr(loaded.head().spec, "system_prompt", None)


def _chat_format(loaded: Loaded) -> bool:
    """Whether a plain string is a user turn: on instruct models, and on base models fine-tuned on turns."""
    if loaded.instruct:
        return True
    return len(loaded.tasks) == 1 and getattr(loaded.head().spec, "format", "text") in TURN_FORMATS


def _encode_turns(messages: list[dict[str, str]], tokenizer: Any, instruct: bool) -> list[int]:
    """Token ids of chat turns rendered for generation (ending with the assistant's generation prompt)."""
    # the rendering holds every special token it needs (BOS included)
    text = render_messages(messages, tokenizer, instruct, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(loaded: Loaded, prompt: Prompt, system: str | None = None) -> list[int]:
    """The token ids generation starts from for one prompt (a string or chat turns); `system` overrides the
    task's system prompt."""
    tokenizer = loaded.tokenizer
    if isinstance(prompt, str) and not _chat_format(loaded):
        if system:
            prompt = f"{system}\n{prompt}"
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else check_messages(prompt)
    system = system or _system_prompt(loaded)
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return _encode_turns(messages, tokenizer, loaded.instruct)


def generate_texts(
    loaded: Loaded,
    prompts: list[Prompt],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 8,
    streamer: Any = None,
    system: str | None = None,
) -> list[str]:
    """The generated completion of each prompt (greedy unless `temperature` > 0), in prompt order."""
    if not loaded.causal_lm:
        raise SpartaError(
            "this model is a classifier; generation needs an SFT run, a causal LM or a base model"
        )
    ids = [prompt_ids(loaded, p, system) for p in prompts]
    context = loaded.context
    for i, seq in enumerate(ids):
        if context is not None and len(seq) + max_new_tokens > context:
            raise SpartaError(
                f"prompt {i + 1} has {len(seq)} tokens; with {max_new_tokens} new tokens that passes the model's "
                f"context of {context}: shorten it or lower --max-new-tokens"
            )
    with loaded.autocast():
        return generate(
            loaded.model,
            loaded.tokenizer,
            ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
            streamer=streamer,
        )


def trim_history(
    loaded: Loaded, messages: list[dict[str, str]], max_new_tokens: int, system: str | None = None
) -> list[dict[str, str]]:
    """A conversation cut to fit the context: its oldest user/assistant turns dropped (a system turn kept), so
    that the prompt and `max_new_tokens` new tokens fit."""
    context = loaded.context
    if context is None:
        return messages
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(head) :]
    while len(turns) > 1 and len(prompt_ids(loaded, head + turns, system)) + max_new_tokens > context:
        turns = turns[2:] if len(turns) > 2 else turns[1:]
    return head + turns
