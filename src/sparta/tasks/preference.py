"""Preference pairs for DPO: the hh-rlhf dialogue format split into a prompt and two replies, and the
deterministic train/dev/test carve of the harmless pairs available offline.

hh-rlhf stores each side of a pair as a whole dialogue, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; chosen and
rejected share every turn but the last Assistant reply. `split_dialogue_pair` cuts both at the last
``"\\n\\nAssistant:"`` inside their common prefix: before it is the shared prompt (turned into chat messages, the
last one the user's), after it the two replies. A pair whose reply still holds a ``"\\n\\nHuman:"`` turn after
the cut (the dialogues diverge earlier than their last reply), whose replies are identical, or one of whose
replies is empty is not a clean comparison: it is dropped and counted, never guessed at.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
HH_SPLIT_SEED = 20261201  # the carve of the 2,312 offline pairs; fixed, so every run sees the same split
HH_SIZES = {"dev": 250, "test": 250}  # the rest (1,812 of 2,312) is train


@dataclass(frozen=True)
class PairSplit:
    """A preference pair as prompt messages and two replies."""

    messages: list[dict[str, str]]
    chosen: str
    rejected: str


def dialogue_messages(text: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b..."`` as [{"role": "user", "content": "a"}, {"role": "assistant", ...}]."""
    messages: list[dict[str, str]] = []
    rest = text
    while rest:
        human, assistant = rest.find(HUMAN), rest.find(ASSISTANT)
        starts = [(i, m) for i, m in ((human, HUMAN), (assistant, ASSISTANT)) if i >= 0]
        if not starts:
            break
        i, marker = min(starts)
        nxt = [
            j for j in (rest.find(HUMAN, i + len(marker)), rest.find(ASSISTANT, i + len(marker))) if j >= 0
        ]
        end = min(nxt) if nxt else len(rest)
        role = "user" if marker == HUMAN else "assistant"
        messages.append({"role": role, "content": rest[i + len(marker) : end].strip()})
        rest = rest[end:]
    return messages


def split_dialogue_pair(chosen: str, rejected: str) -> tuple[PairSplit | None, str | None]:
    """(the pair split, None), or (None, why it is dropped): see the module docstring."""
    common = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        common += 1
    cut = chosen.rfind(ASSISTANT, 0, common)  # the last reply both dialogues start from
    if chosen == rejected:
        return None, "identical"
    if cut < 0:
        return None, "no shared prompt"
    prompt, start = chosen[:cut], cut + len(ASSISTANT)
    reply_c, reply_r = chosen[start:].strip(), rejected[start:].strip()
    if HUMAN in reply_c or HUMAN in reply_r:
        return None, "diverges before the last reply"
    if not reply_c or not reply_r:
        return None, "empty reply"
    if reply_c == reply_r:
        return None, "identical"
    messages = dialogue_messages(prompt)
    if not messages or messages[-1]["role"] != "user":
        return None, "no user turn before the replies"
    return PairSplit(messages, reply_c, reply_r), None


def carve(
    rows: list[dict], sizes: dict[str, int] = HH_SIZES, seed: int = HH_SPLIT_SEED
) -> dict[str, list[dict]]:
    """{train, dev, test}: a fixed shuffle of `rows` cut into dev and test of `sizes` and train (the rest),
    before any filtering, so a change of length limit never moves a pair between splits."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_dev, n_test = sizes["dev"], sizes["test"]
    return {
        "test": [rows[i] for i in order[:n_test]],
        "dev": [rows[i] for i in order[n_test : n_test + n_dev]],
        "train": [rows[i] for i in order[n_test + n_dev :]],
    }


PAIR_FIELDS = (
    "prompt",
    "chosen",
    "rejected",
)  # the default columns (TaskSpec's prompt/chosen/rejected_field)


def pair_columns(task: object) -> tuple[str, str, str]:
    """The (prompt, chosen, rejected) column names of a preference task (the defaults where it names none)."""
    names = ("prompt_field", "chosen_field", "rejected_field")
    return tuple(getattr(task, n, d) for n, d in zip(names, PAIR_FIELDS, strict=True))  # type: ignore[return-value]


def _reply(value: object) -> str | None:
    """A reply as text: a string, or a list of turns whose last is the assistant's (TRL's conversational form)."""
    if isinstance(value, str):
        return value.strip()
    if (
        isinstance(value, list)
        and value
        and isinstance(value[-1], dict)
        and value[-1].get("role") == "assistant"
    ):
        content = value[-1].get("content")
        return content.strip() if isinstance(content, str) else None
    return None


def _prompt_messages(value: object) -> list[dict[str, str]] | None:
    """A prompt as chat messages: a string is one user turn; a list of {role, content} turns is kept."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if value.strip() else None
    if (
        isinstance(value, list)
        and value
        and all(isinstance(t, dict) and {"role", "content"} <= set(t) for t in value)
    ):
        return [{"role": str(t["role"]), "content": str(t["content"])} for t in value]
    return None


def pair_of(row: dict, columns: tuple[str, str, str] = PAIR_FIELDS) -> tuple[PairSplit | None, str | None]:
    """(the pair, None) or (None, why it is dropped) for one row of either data format (`columns`: the names of
    the prompt, chosen and rejected columns, `pair_columns`):

    * ``prompt`` (text, or chat messages ending with the user's turn) with ``chosen`` and ``rejected`` replies
      (text, or a list of turns ending with the assistant's);
    * hh-rlhf's ``chosen`` and ``rejected`` whole dialogues and no ``prompt`` (`split_dialogue_pair`).

    Dropped (never guessed at): a missing field, an empty reply, identical replies, a prompt that is no
    conversation, or (hh-rlhf) dialogues that do not differ in their last reply only."""
    prompt_column, chosen_column, rejected_column = columns
    missing = [f for f in (chosen_column, rejected_column) if row.get(f) is None]
    if missing:
        return None, f"missing field {missing[0]}"
    if row.get(prompt_column) is None:
        chosen, rejected = row[chosen_column], row[rejected_column]
        if isinstance(chosen, str) and isinstance(rejected, str) and HUMAN in chosen:
            return split_dialogue_pair(chosen, rejected)
        return None, f"missing field {prompt_column}"
    messages = _prompt_messages(row[prompt_column])
    if messages is None or messages[-1]["role"] != "user":
        return None, "no user turn before the replies"
    chosen, rejected = _reply(row[chosen_column]), _reply(row[rejected_column])
    if chosen is None or rejected is None:
        return None, "a reply is not text"
    if not chosen or not rejected:
        return None, "empty reply"
    if chosen == rejected:
        return None, "identical"
    return PairSplit(messages, chosen, rejected), None
