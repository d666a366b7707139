"""Tiny stand-ins for the SFT data tests: a word-level tokenizer that keeps "\\n" as a token (as BPE tokenizers do)
and small Jinja chat templates shaped like SmolLM2's (ChatML, with a default system prompt) and Llama 3's."""

from __future__ import annotations

import dataclasses

from sparta.tasks import TaskSpec

SPECIAL = [
    "<pad>",
    "<unk>",
    "<s>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
WORDS = [
    "\n",
    "system",
    "user",
    "assistant",
    "You",
    "are",
    "a",
    "helpful",
    "bot",
    "tutor",
    ".",
    "what",
    "is",
    "2",
    "+",
    "=",
    "4",
    "it",
    "hi",
    "hello",
    "there",
    "###",
    "System",
    "User",
    "Assistant",
    ":",
    "good",
    "thanks",
    "bye",
    "see",
    "you",
    "48",
    "/",
    "24",
    "####",
    "72",
    "sold",
    "clips",
    "the",
    "cat",
    "sat",
    ":=",
]

# SmolLM2-135M-Instruct's template, with a shorter default system prompt in the test vocabulary
SMOL_DEFAULT_SYSTEM = "You are a helpful bot ."
SMOL = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SMOL_DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama 3's shape: BOS written by the template, header tokens around the role, <|eot_id|> ends every turn
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# renders a past assistant turn shorter once another turn follows (as templates that drop past reasoning do)
REWRITES = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and not loop.last %}...{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# no space after the role's colon: a reply starting with punctuation merges with it into one token
GLUED = (
    "{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def word_tokenizer(
    template: str | None = None, *, pad: str = "<pad>", bos: str = "<s>", adds_bos: bool = False
):
    """A fast word-level tokenizer: words, runs of punctuation and "\\n" are tokens, spaces are dropped.
    `adds_bos`: it puts `bos` first by itself (as Llama 2's does), so base-model encodings start with it."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n|\w+|[^\w\s]+"), behavior="removed", invert=True)
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, vocab[bos])]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=pad,
        unk_token="<unk>",
        bos_token=bos,
        eos_token="</s>",
        additional_special_tokens=SPECIAL[4:],
    )
    if template is not None:
        tok.chat_template = template
    return tok


def lm_task(**fields) -> TaskSpec:
    """A language-modelling spec (``format`` messages unless given)."""
    base = TaskSpec("sft", 0, (), "", (), (), "", metrics=("loss",), objective="language-modelling")
    return dataclasses.replace(base, **fields)


def targets(tok, ids: list[int], mask: list[int]) -> list[str]:
    """The tokens that carry loss."""
    return tok.convert_ids_to_tokens([i for i, m in zip(ids, mask, strict=True) if m])


def tokens(tok, ids: list[int]) -> list[str]:
    return tok.convert_ids_to_tokens(ids)
