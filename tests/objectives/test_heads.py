import math

import pytest
import torch
import torch.nn.functional as F

from sparta.errors import SpartaError
from sparta.models import load_model, load_tokenizer, resolve_model
from sparta.objectives.batching import collate
from sparta.objectives.heads import (
    get_head,
    init_base_head,
    init_instruct_head,
    label_token_id,
    label_token_ids,
)
from tinylm import make_tokenizer, toy_examples


def seq_cls(model_dir, num_labels=2):
    resolved = resolve_model(str(model_dir))
    tok = load_tokenizer(resolved)
    model = load_model(resolved, task="classification", num_labels=num_labels)
    model.config.pad_token_id = tok.pad_token_id
    return resolved, model.eval(), tok


def test_base_head_init_has_the_paper_std_and_starts_near_log_c(base_model_dir):
    _, model, tok = seq_cls(base_model_dir, num_labels=4)
    std = init_base_head(model, seed=0)
    d = get_head(model).in_features
    assert std == pytest.approx(0.06 / math.sqrt(d))
    assert get_head(model).weight.std().item() == pytest.approx(std, rel=0.2)
    texts = [ex["text"] for ex in toy_examples(64, seed=5)]
    batch = collate([tok(t)["input_ids"] for t in texts], tok.pad_token_id, "right")
    labels = torch.randint(0, 4, (len(texts),), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = F.cross_entropy(model(**batch).logits, labels).item()
    assert loss == pytest.approx(math.log(4), abs=0.03)


@pytest.mark.parametrize("fixture", ["instruct_model_dir", "tied_instruct_model_dir"])
def test_instruct_head_copies_the_lm_output_rows_of_the_label_tokens(request, fixture):
    from transformers import AutoModelForCausalLM

    model_dir = request.getfixturevalue(fixture)
    resolved, model, tok = seq_cls(model_dir)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "good"}], tokenize=False, add_generation_prompt=True
    )
    info = init_instruct_head(model, tok, ["No", "Yes"], prompt, resolved.path)
    assert info["token_ids"] == tok.convert_tokens_to_ids(["No", "Yes"])
    lm = AutoModelForCausalLM.from_pretrained(str(model_dir))
    head = get_head(model).weight
    torch.testing.assert_close(head, lm.lm_head.weight[info["token_ids"]], rtol=0, atol=0)
    # a copy, never tied: other storage than the embeddings, and training it leaves them alone
    emb = model.get_input_embeddings().weight
    assert head.data_ptr() != emb.data_ptr()
    before = emb.detach().clone()
    with torch.no_grad():
        head.add_(1.0)
    torch.testing.assert_close(emb, before, rtol=0, atol=0)


def bpe_tokenizer(corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>")


def test_label_token_rule_uses_the_token_generated_after_the_prompt():
    # byte-level BPE (Llama-3/GPT-2 style) where both "Yes" and " Yes" are single tokens
    tok = bpe_tokenizer(["Yes No", "a Yes", "b No", "Yes", "No"] * 20)
    yes, space_yes = tok.convert_tokens_to_ids(["Yes", "ĠYes"])
    assert yes != space_yes and tok.unk_token_id not in (yes, space_yes)
    assert label_token_id(tok, "Yes", prompt="a\n") == yes  # after a chat generation prompt: no space
    assert label_token_id(tok, "Yes") == yes  # no prompt: the spelling that is one token, unspaced first
    # a vocabulary that only knows " Yes" as one token: the fallback picks it
    spaced = bpe_tokenizer(["a Yes", "b No"] * 20)
    assert label_token_id(spaced, "Yes") == spaced.convert_tokens_to_ids("ĠYes")


def test_label_words_sharing_a_token_are_refused():
    tok = make_tokenizer(chat=False)
    with pytest.raises(SpartaError, match="same token"):
        label_token_ids(tok, ["zzz", "qqq"])  # both <unk>


def test_left_and_right_padding_give_the_same_logits_as_unpadded(base_model_dir):
    _, model, tok = seq_cls(base_model_dir)
    texts = ["the movie was really good", "bad", "a plot . story was quite bad !"]
    ids = [tok(t)["input_ids"] for t in texts]
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([s])).logits for s in ids])
        right = model(**collate(ids, tok.pad_token_id, "right")).logits
        left = model(**collate(ids, tok.pad_token_id, "left")).logits
    torch.testing.assert_close(right, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(left, alone, rtol=1e-4, atol=1e-5)
