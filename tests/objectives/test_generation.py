"""`sparta.objectives.generation.generate` on a tiny causal LM: batching and padding do not change greedy output,
generation stops at EOS and at the end-of-turn token, sampling follows its seed, and SpaRTA and PEFT models
generate through the same call."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GenerationConfig

from sparta import SpartaConfig, SpartaError, get_sparta_model
from sparta.objectives.generation import generate, stop_token_ids
from tinylm import make_causal_lm, make_tokenizer

torch.set_num_threads(1)

TEXTS = ["the movie was good", "a", "the plot is very bad , really !", "music scene ending", "Yes or No ?"]


@pytest.fixture(scope="module")
def lm():
    tok = make_tokenizer(chat=True)
    return make_causal_lm(len(tok), tied=False, seed=3).eval(), tok


def _prompts(tok) -> list[list[int]]:
    return [tok(t)["input_ids"] for t in TEXTS]


def _plain_greedy(model, ids: list[int], n: int) -> list[int]:
    """Greedy continuation by plain transformers with no stop token: the reference sequence."""
    config = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    out = model.generate(input_ids=torch.tensor([ids]), generation_config=config)
    return out[0, len(ids) :].tolist()


def test_batched_greedy_equals_one_by_one_whatever_the_padding_side(lm):
    model, tok = lm
    prompts = _prompts(tok)
    single = [generate(model, tok, [p], max_new_tokens=10)[0] for p in prompts]
    assert len(set(single)) > 2  # the prompts lead to different texts: the comparison below means something
    for side in ("left", "right"):
        tok.padding_side = side
        for batch_size in (2, 5):
            assert generate(model, tok, prompts, max_new_tokens=10, batch_size=batch_size) == single


def test_greedy_output_is_the_decoded_greedy_continuation(lm):
    model, tok = lm
    prompts = _prompts(tok)
    stops = set(stop_token_ids(tok, model))
    for p, text in zip(prompts, generate(model, tok, prompts, max_new_tokens=8), strict=True):
        ref = _plain_greedy(model, p, 8)
        end = next((i for i, t in enumerate(ref) if t in stops), len(ref))
        assert text == tok.decode(ref[:end], skip_special_tokens=True)


@pytest.mark.parametrize("stop", ["eos", "end_of_turn"])
def test_generation_stops_at_eos_and_end_of_turn(lm, stop):
    model, tok = lm
    prompt = tok("the movie was")["input_ids"]
    ref = _plain_greedy(model, prompt, 12)
    # the first new token that did not occur before: make the model emit the stop token there instead, by
    # swapping the two tokens' rows of the (untied) LM head; the tokens before it keep their logits
    k = next(i for i in range(2, len(ref)) if ref[i] not in ref[:i])
    target = tok.eos_token_id if stop == "eos" else tok.convert_tokens_to_ids("<|im_end|>")
    assert target in stop_token_ids(tok, model) and target not in ref[: k + 1]
    swapped = make_causal_lm(len(tok), tied=False, seed=3).eval()
    with torch.no_grad():
        w = swapped.lm_head.weight
        w[[ref[k], target]] = w[[target, ref[k]]].clone()
    assert _plain_greedy(swapped, prompt, k + 1) == ref[:k] + [target]
    (text,) = generate(swapped, tok, [prompt], max_new_tokens=12)
    assert text == tok.decode(ref[:k], skip_special_tokens=True)


def test_sampling_follows_the_seed_and_leaves_the_global_random_state(lm):
    model, tok = lm
    prompts = _prompts(tok)
    state = torch.random.get_rng_state()
    a = generate(model, tok, prompts, max_new_tokens=10, temperature=1.5, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert generate(model, tok, prompts, max_new_tokens=10, temperature=1.5, seed=1) == a
    b = generate(model, tok, prompts, max_new_tokens=10, temperature=1.5, seed=2)
    assert a != b and a != generate(model, tok, prompts, max_new_tokens=10)


def test_sparta_and_peft_models_generate_their_adapted_output(lm):
    _, tok = lm
    prompts = _prompts(tok)
    base = generate(make_causal_lm(len(tok), tied=False, seed=3).eval(), tok, prompts, max_new_tokens=10)
    torch.manual_seed(0)
    sparse = get_sparta_model(
        make_causal_lm(len(tok), tied=False, seed=3), SpartaConfig(density=0.3, head_modules=[])
    )
    with torch.no_grad():
        for p in sparse.delta_parameters().values():
            p.normal_(0, 0.5)
    merged = get_sparta_model(
        make_causal_lm(len(tok), tied=False, seed=3), SpartaConfig(density=0.3, head_modules=[])
    )
    with torch.no_grad():
        for name, p in merged.delta_parameters().items():
            p.copy_(sparse.delta_parameters()[name])
    plain = merged.merge_and_unload()
    out = generate(sparse, tok, prompts, max_new_tokens=10)
    assert out == generate(plain, tok, prompts, max_new_tokens=10) and out != base
    lora = get_peft_model(
        make_causal_lm(len(tok), tied=False, seed=3),
        LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    out = generate(lora, tok, prompts, max_new_tokens=10)
    assert out == generate(lora.merge_and_unload(), tok, prompts, max_new_tokens=10) and out != base


def test_bad_arguments_are_clear_errors(lm):
    model, tok = lm
    assert generate(model, tok, []) == []
    with pytest.raises(SpartaError, match="empty prompt"):
        generate(model, tok, [[]])
    with pytest.raises(SpartaError, match="max_new_tokens"):
        generate(model, tok, [[5]], max_new_tokens=0)
    with pytest.raises(SpartaError, match="top_p"):
        generate(model, tok, [[5]], temperature=1.0, top_p=0.0)
