"""The language-modelling objective: its loss and gradients equal the full-logits computation for every method
and family, the LM head never holds a (tokens x vocabulary) tensor, evaluation and encoding keep the contract."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sparta.errors import SpartaError
from sparta.methods import get_method
from sparta.objectives import LanguageModelling, objective_for
from sparta.objectives import lm_head as LH
from sparta.objectives.batching import collate
from sparta.objectives.generation import generate
from sparta.tasks import exact_match
from tinylm import make_tokenizer
from tinysft import (
    FAMILIES,
    random_lm_data,
    tiny_lm,
    toy_sft_examples,
    toy_sft_task,
    write_jsonl,
    write_toy_sft_files,
)

LM = LanguageModelling()


def run_cfg(**overrides) -> SimpleNamespace:
    """The settings methods read (what `TrainConfig` holds), for a method applied outside the training loop."""
    values = dict(
        method="sparta",
        density=0.3,
        targets=None,
        seed=0,
        index_seed=None,
        lora_r=4,
        lora_alpha=8.0,
        lora_dropout=0.0,
        lm_head="frozen",
        loss_on="assistant",
        template=None,
    )
    return SimpleNamespace(**(values | overrides))


def reference_sum(model, data, idx, padding_side="right") -> torch.Tensor:
    """Summed NLL the plain way: the model's own loss over full logits (`labels`, -100 off the targets)."""
    batch = collate([data.input_ids[i] for i in idx], 0, padding_side)
    mask = collate([data.loss_mask[i] for i in idx], 0, padding_side)["input_ids"]
    labels = batch["input_ids"].masked_fill(mask == 0, -100)
    return model(**batch, labels=labels).loss * int(mask[:, 1:].sum())


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def trainable(family: str, method: str, lm_head: str = "frozen"):
    model = tiny_lm(family)
    targets = ["c_attn"] if family == "gpt2" and method != "sparta" else None  # GPT-2's fused q,k,v (Conv1D)
    cfg = run_cfg(method=method, lm_head=lm_head, targets=targets)
    return get_method(method).apply(model, cfg, LM), model


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """7 rows per chunk of the tiny vocabulary: every batch spans several chunks."""
    monkeypatch.setattr(LH, "CHUNK_ELEMENTS", 7 * 128)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["sparta", "lora", "full"])
def test_loss_and_gradients_equal_the_full_logits_computation(family, method):
    net, _ = trainable(family, method)
    data, idx = random_lm_data(6, seed=1), [0, 1, 2, 3, 4, 5]
    ours = LM.batch_loss(net, data, idx, 0, "right", "cpu")
    ours.backward()
    ours_grads = grads(net)
    net.zero_grad()
    reference = reference_sum(net, data, idx)
    reference.backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    expected = grads(net)
    assert set(ours_grads) == set(expected) and expected
    for name, g in expected.items():
        torch.testing.assert_close(ours_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", ["llama-tied", "gpt2"])
@pytest.mark.parametrize(
    ("method", "lm_head"), [("sparta", "train"), ("sparta", "sparse"), ("lora", "train")]
)
def test_head_gradients_equal_the_full_logits_computation(family, method, lm_head):
    """A trained (or sparsely adapted) LM head gets the gradient the full-logits loss gives it."""
    net, base = trainable(family, method, lm_head)
    data, idx = random_lm_data(6, seed=6), [0, 1, 2, 3, 4, 5]
    LM.batch_loss(net, data, idx, 0, "right", "cpu").backward()
    ours = grads(net)
    net.zero_grad()
    reference_sum(net, data, idx).backward()
    expected = grads(net)
    heads = [n for n in expected if "lm_head" in n]
    assert heads and set(ours) == set(expected)
    for name, g in expected.items():
        torch.testing.assert_close(ours[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_a_frozen_head_is_cast_once_under_autocast_with_the_same_numbers(monkeypatch):
    """Under bf16 autocast the frozen head's weight is cast once per batch, not once per chunk, and the loss and
    the rows' gradients are bitwise those of calling the head itself on every chunk."""
    net, model = trainable("llama-tied", "sparta")
    data, idx = random_lm_data(6, seed=2), [0, 1, 2, 3, 4, 5]
    head_weight = model.get_output_embeddings().weight
    casts = []
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        if self is head_weight:
            casts.append(args)
        return real_to(self, *args, **kwargs)

    def loss_and_grads():
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = LM.batch_loss(net, data, idx, 0, "right", "cpu")
        loss.backward()
        return loss.detach(), grads(net)

    loss_and_grads()  # the first batch also checks the head's logit transforms (one more cast)
    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    once, once_grads = loss_and_grads()
    assert len(casts) == 1 and sum(map(sum, data.loss_mask)) > 2 * LH.chunk_rows_for(128)  # several chunks
    monkeypatch.setattr(LH, "_cast_once", lambda head: head)  # every chunk calls the head under autocast
    every, every_grads = loss_and_grads()
    assert torch.equal(once, every) and once_grads
    for name, g in every_grads.items():
        assert torch.equal(once_grads[name], g), name


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padding_sides_give_the_same_loss(padding_side):
    model = tiny_lm("llama-tied")
    data = random_lm_data(5, seed=2)
    with torch.no_grad():
        ours = LM.batch_loss(model, data, [0, 1, 2, 3, 4], 0, padding_side, "cpu")
        one_by_one = sum(reference_sum(model, data, [i]) for i in range(5))
    assert ours.item() == pytest.approx(one_by_one.item(), rel=1e-5)


def test_gemma2_soft_capping_is_applied():
    """With large logits the cap changes the loss; the chunked head's loss is the model's, not the uncapped one."""
    model = tiny_lm("gemma2")
    with torch.no_grad():
        model.lm_head.weight.mul_(200)
    data, idx = random_lm_data(4, seed=3), [0, 1, 2, 3]
    with torch.no_grad():
        ours = LM.batch_loss(model, data, idx, 0, "right", "cpu").item()
        reference = reference_sum(model, data, idx).item()
        model.config.final_logit_softcapping = None
        uncapped = reference_sum(model, data, idx).item()
    assert ours == pytest.approx(reference, rel=1e-5)
    assert abs(uncapped - reference) > 0.1 * reference


def test_an_unknown_logit_transform_is_a_clear_error():
    model = tiny_lm("llama-untied")
    with torch.no_grad():
        model.lm_head.weight.mul_(200)
    model.config.final_logit_softcapping = 1.0  # Llama ignores it, the chunked head would apply it
    with pytest.raises(SpartaError, match="does not reproduce"):
        LM.batch_loss(model, random_lm_data(2), [0, 1], 0, "right", "cpu")


def test_lazy_sparta_sync_applies_to_the_chunked_loss():
    """After an optimizer step the merged weights are stale until a forward: the chunked loss goes through the
    wrapped forward (and the sparse LM head's own), so it sees the new deltas like a plain forward does."""
    net, _ = trainable("llama-untied", "sparta", lm_head="sparse")
    data, idx = random_lm_data(4, seed=4), [0, 1, 2, 3]
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=5.0)
    LM.batch_loss(net, data, idx, 0, "right", "cpu").backward()
    opt.step()
    with torch.no_grad():
        after = LM.batch_loss(net, data, idx, 0, "right", "cpu").item()  # the first forward after the step
        reference = reference_sum(net, data, idx).item()
        before = reference_sum(tiny_lm("llama-untied"), data, idx).item()
    assert after == pytest.approx(reference, rel=1e-5) and abs(after - before) > 1e-3


def test_no_vocabulary_sized_tensor_is_kept_for_backward():
    """What autograd saves for backward: never anything of (target rows x vocabulary); the full-logits loss does."""
    net, _ = trainable("llama-tied", "sparta", lm_head="train")
    data = random_lm_data(
        8, seed=5, min_len=14, max_len=18, loss_on="all"
    )  # > 100 rows; vocabulary 128, width 32
    idx = list(range(8))
    rows = LM.units(data, idx)

    def largest_saved(loss_fn) -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            loss_fn()
        return max(sizes)

    vocab = 128
    assert rows > 3 * 32  # (so that rows x vocab is larger than the head's own weight)
    assert largest_saved(lambda: LM.batch_loss(net, data, idx, 0, "right", "cpu")) < rows * vocab
    assert largest_saved(lambda: reference_sum(net, data, idx)) >= rows * vocab  # the check can fail


@pytest.mark.parametrize("lm_head", ["train", "sparse"])
def test_a_tied_head_is_untied_and_the_embeddings_stay_exact(lm_head):
    net, base = trainable("llama-tied", "sparta", lm_head=lm_head)
    embeddings = base.get_input_embeddings().weight
    before = embeddings.detach().clone()
    assert base.get_output_embeddings().weight is not embeddings and not base.config.tie_word_embeddings
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        LM.batch_loss(net, random_lm_data(4), [0, 1, 2, 3], 0, "right", "cpu").backward()
        opt.step()
        opt.zero_grad()
    net.sync_weights()
    assert torch.equal(embeddings, before) and not embeddings.requires_grad
    head = base.get_output_embeddings().weight
    changed = head.detach() != before
    assert changed.any()
    if lm_head == "sparse":  # only the sampled positions moved
        flat = net.delta_indices()["lm_head.weight"]
        assert set(changed.reshape(-1).nonzero().flatten().tolist()) <= set(flat.tolist())


def test_untie_leaves_an_untied_model_alone():
    model = tiny_lm("llama-untied")
    head = model.lm_head.weight
    assert LH.untie_lm_head(model) is False and model.lm_head.weight is head


def test_sparta_refuses_a_tied_head():
    from sparta import SpartaConfig, get_sparta_model

    model = tiny_lm("gpt2")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(SpartaError, match="tied weights"):
        get_sparta_model(model, SpartaConfig(target_modules=["all-linear", "lm_head"], head_modules=[]))
    assert all(torch.equal(p, before[n]) and p.requires_grad for n, p in model.named_parameters())


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory):
    """The toy prompt/completion task as a custom language-modelling task, scored by exact match."""
    return toy_sft_task(write_toy_sft_files(tmp_path_factory.mktemp("toy-sft")), generation_metric=True)


def test_objective_registry_and_attributes(toy_task):
    lm = objective_for(toy_task)
    assert lm is objective_for(SimpleNamespace(), "language-modelling")
    assert (lm.name, lm.model_kind, lm.peft_task_type, lm.head_modules) == (
        "language-modelling",
        "causal-lm",
        "CAUSAL_LM",
        (),
    )
    assert lm.init_head(None, None, None, True, None, None, 0) == {"kind": "none"}
    assert lm.metric_names(toy_task) == ["exact_match"]
    assert objective_for(SimpleNamespace()).name == "classification"


# -- encoding: the real chat format (tinylm.py's ChatML template) -------------------------------------------------
@pytest.fixture
def chat():
    return make_tokenizer(chat=True)


def test_encode_masks_drops_and_keeps(chat, toy_task):
    task, examples = toy_task, toy_sft_examples(12, seed=7)
    whole = LM.encode(examples, task, chat, True)
    lengths = whole.lengths
    limit = sorted(lengths)[6]
    train = LM.encode(examples, task, chat, True, max_length=limit)
    assert len(train) == sum(n <= limit for n in lengths) and train.dropped == 12 - len(train)
    dev = LM.encode(examples, task, chat, True, max_length=limit, truncate=True)
    assert dev.input_ids == whole.input_ids and dev.dropped == 0  # dev/test are never cut
    # the assistant's answer ("Yes ." / "No .") and its end-of-turn token carry the loss
    assert whole.targets == [3] * 12 and LM.units(whole, [0, 1, 2]) == 9
    first = chat.convert_ids_to_tokens(whole.input_ids[0])
    assert [t for t, m in zip(first, whole.loss_mask[0], strict=True) if m] == [
        *examples[0]["completion"].split(),
        "<|im_end|>",
    ]
    assert whole.prompts[0] == whole.input_ids[0][: len(whole.prompts[0])]
    assert chat.convert_ids_to_tokens(whole.prompts[0])[-2:] == ["<|im_start|>", "assistant"]
    assert whole.references == [ex["completion"] for ex in examples]
    everything = LM.encode(examples, task, chat, True, loss_on="all")
    assert everything.targets == [n - 1 for n in lengths]
    with pytest.raises(SpartaError, match="template"):
        LM.encode(examples, task, chat, True, template="{text}")


def test_training_examples_without_a_target_are_dropped(chat, tmp_path):
    """A one-token text row on a tokenizer without an EOS token has no target (the first token never is one)."""
    chat.eos_token = None
    examples = [{"text": "good"}, {"text": "the film"}, {"text": "bad"}]
    task = toy_sft_task({"train": write_jsonl(tmp_path / "train.jsonl", examples)})
    train = LM.encode(examples, task, chat, True)
    assert (len(train), train.untargeted, train.dropped) == (1, 2, 0) and train.targets == [1]
    assert len(LM.encode(examples, task, chat, True, truncate=True)) == 3  # dev/test keep them


# -- evaluation --------------------------------------------------------------------------------------------------
def test_evaluate_is_the_mean_nll_per_target_token(toy_task):
    model = tiny_lm("qwen2")
    data = random_lm_data(7, seed=8)
    with torch.no_grad():
        expected = sum(reference_sum(model, data, [i]).item() for i in range(7)) / sum(data.targets)
    for batch_size in (1, 3, 16):
        got = LM.evaluate(model, data, toy_task, batch_size, 0, "right", "cpu")
        assert got == {"loss": pytest.approx(expected, rel=1e-5)}


def test_records_hold_each_examples_nll_in_split_order(toy_task):
    """Per-example records (for paired comparisons): each example's summed NLL as a batch of one computes it,
    in split order whatever the batching, and the split's loss unchanged by asking for them."""
    model = tiny_lm("qwen2")
    data = random_lm_data(7, seed=8)
    with torch.no_grad():
        each = [reference_sum(model, data, [i]).item() for i in range(7)]
    plain = LM.evaluate(model, data, toy_task, 3, 0, "right", "cpu")
    records: list = []
    got = LM.evaluate(model, data, toy_task, 3, 0, "right", "cpu", records=records)
    assert got == plain
    assert [r["index"] for r in records] == list(range(7))
    assert [r["nll"] for r in records] == pytest.approx(each, rel=1e-5)
    assert [r["tokens"] for r in records] == data.targets
    assert len({r["key"] for r in records}) == 7  # one hash per encoded example


def test_evaluate_scores_generations(chat, toy_task, tmp_path):
    """generate=True: greedy generations from each example's prompt (`sparta.objectives.generation`), scored by
    `sparta.tasks.exact_match`: references made from the model's own generations for half of the examples
    match, the others (one more word) do not."""
    model = tiny_lm("llama-tied", seed=1)
    model.train()
    prompts = ["the film was good", "a very bad plot", "music is good", "the ending was bad"]
    placeholder = LM.encode(
        [{"prompt": p, "completion": "Yes ."} for p in prompts], toy_task, chat, True, truncate=True
    )
    own = generate(model, chat, placeholder.prompts, max_new_tokens=3, batch_size=2)
    assert all(text.strip() for text in own)
    references = [text if i % 2 == 0 else f"{text} good" for i, text in enumerate(own)]
    data = LM.encode(
        [{"prompt": p, "completion": r} for p, r in zip(prompts, references, strict=True)],
        toy_task,
        chat,
        True,
        truncate=True,
    )
    assert data.prompts == placeholder.prompts
    got = LM.evaluate(
        model, data, toy_task, 2, 0, "right", "cpu", generate=True, tokenizer=chat, max_new_tokens=3
    )
    assert [exact_match(toy_task, t, r) for t, r in zip(own, references, strict=True)] == [True, False] * 2
    assert got["exact_match"] == 0.5 and got["loss"] > 0 and model.training
    records: list = []
    LM.evaluate(
        model,
        data,
        toy_task,
        2,
        0,
        "right",
        "cpu",
        generate=True,
        tokenizer=chat,
        max_new_tokens=3,
        records=records,
    )
    assert [r["exact_match"] for r in records] == [True, False] * 2


def test_scoring_generations_needs_the_tokenizer(toy_task, chat):
    data = LM.encode(toy_sft_examples(2, seed=2), toy_task, chat, True, truncate=True)
    with pytest.raises(SpartaError, match="needs the tokenizer"):
        LM.evaluate(tiny_lm("llama-tied"), data, toy_task, 2, 0, "right", "cpu", generate=True)
