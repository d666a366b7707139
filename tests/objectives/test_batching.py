import random

import torch

from sparta.objectives.batching import collate, length_grouped_batches, sorted_batches
from sparta.objectives.classification import encode_split


def test_collate_pads_either_side_with_matching_masks_and_positions():
    seqs = [[5, 6, 7], [8]]
    right = collate(seqs, pad_id=0, padding_side="right", labels=[1, 0])
    left = collate(seqs, pad_id=0, padding_side="left")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [1, 0] and "position_ids" not in right
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_length_grouped_batches_cover_every_example_once_and_cut_padding():
    rng = random.Random(0)
    lengths = [rng.randint(1, 200) for _ in range(1000)]
    batches = length_grouped_batches(lengths, 16, random.Random(1))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))

    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    order = list(range(1000))
    random.Random(1).shuffle(order)
    plain = [order[i : i + 16] for i in range(0, 1000, 16)]
    assert padding(batches) < padding(plain) / 3
    # a different rng gives a different order (shuffled per epoch), same examples
    other = length_grouped_batches(lengths, 16, random.Random(2))
    assert other != batches and sorted(i for b in other for i in b) == sorted(flat)


def test_sorted_batches_are_longest_first():
    batches = sorted_batches([3, 9, 1, 7], 2)
    assert batches == [[1, 3], [0, 2]]


def test_encode_split_drops_long_training_examples_and_truncates_eval_from_the_left(toy_task_files):
    from sparta.tasks import get_task
    from tinylm import make_tokenizer

    task = get_task("custom", data_files={"train": str(toy_task_files["train"])})
    tok = make_tokenizer(chat=False)
    examples = [{"text": "the movie was good", "label": 1}, {"text": "the " * 20 + "bad", "label": 0}]
    enc = encode_split(examples, task, tok, instruct=False, max_length=10)
    assert len(enc) == 1 and enc.dropped == 1 and enc.labels == [1]
    assert enc.input_ids[0] == tok("the movie was good")["input_ids"]
    cut = encode_split(examples, task, tok, instruct=False, max_length=10, truncate=True)
    assert len(cut) == 2 and cut.dropped == 0 and max(cut.lengths) == 10
    assert cut.input_ids[1][-1] == tok.convert_tokens_to_ids("bad")


def test_encode_split_instruct_uses_the_chat_template_without_extra_special_tokens(toy_task_files):
    from sparta.tasks import get_task
    from tinylm import make_tokenizer

    task = get_task("custom", data_files={"train": str(toy_task_files["train"])})
    tok = make_tokenizer(chat=True)
    enc = encode_split([{"text": "good movie", "label": 1}], task, tok, instruct=True)
    tokens = tok.convert_ids_to_tokens(enc.input_ids[0])
    assert tokens[0] == "<|im_start|>" and tokens[-1] == "assistant" and "<s>" not in tokens
    assert torch.tensor(enc.input_ids).numel() == len(tokens)
