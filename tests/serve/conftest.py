"""Fixtures of the serving tests: tiny SpaRTA SFT runs of one tiny instruct model (four served from the start,
more in an allowed folder for runtime loads, one of another base model, a LoRA run, one outside the folder),
one `sparta serve` process over them for the session, and what `sparta generate` answers for each run."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from servekit import ADAPTERS, API_KEY, MAX_BODY, MAX_PROMPT_TOKENS, MAX_TOKENS, serving

from sparta.runs import generate_texts, open_model
from tinylm import make_causal_lm, make_tokenizer
from tinysftruns import write_sft_run

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def runs(tmp_path_factory, instruct_model_dir) -> dict[str, Path]:
    """{name: run dir}: the served adapters, then "extra", "other-base", "lora" in the allowed folder and
    "outside" beside it."""
    root = tmp_path_factory.mktemp("serve-runs")
    out = {n: write_sft_run(root / "served" / n, instruct_model_dir, seed=i) for i, n in enumerate(ADAPTERS)}
    out["extra"] = write_sft_run(root / "library" / "extra", instruct_model_dir, seed=11)
    other = root / "other-model"
    make_causal_lm(len(make_tokenizer(True)), tied=False, seed=7).save_pretrained(other)
    make_tokenizer(True).save_pretrained(other)
    out["other-base"] = write_sft_run(root / "library" / "other-base", other, seed=12)
    out["lora"] = write_sft_run(root / "library" / "lora", instruct_model_dir, method="lora", seed=13)
    out["outside"] = write_sft_run(root / "outside", instruct_model_dir, seed=14)
    return out


@pytest.fixture(scope="session")
def library(runs) -> Path:
    return runs["extra"].parent


@pytest.fixture(scope="session")
def expected(runs, instruct_model_dir):
    """expected(name, prompt, max_tokens, **sampling): `generate_texts` of that run (or of the base model,
    `instruct_model_dir.name`), i.e. what `sparta generate` prints."""
    dirs = {**runs, instruct_model_dir.name: instruct_model_dir}

    @functools.cache
    def loaded(name: str):
        if name == instruct_model_dir.name:
            return open_model(instruct_model_dir, device="cpu", objective="language-modelling")
        return open_model(dirs[name], device="cpu")

    def answer(name: str, prompt, max_tokens: int, **kw) -> str:
        return generate_texts(loaded(name), [prompt], max_new_tokens=max_tokens, **kw)[0]

    answer.loaded = loaded
    return answer


@pytest.fixture(scope="session")
def server(runs, library, instruct_model_dir, tmp_path_factory):
    argv = [
        str(instruct_model_dir),
        *[f"--adapter={n}={runs[n]}" for n in ADAPTERS],
        "--adapter-root",
        str(library),
        "--max-prompt-tokens",
        str(MAX_PROMPT_TOKENS),
        "--max-tokens-limit",
        str(MAX_TOKENS),
        "--max-body-bytes",
        str(MAX_BODY),
    ]
    with serving(argv, tmp_path_factory.mktemp("serve-log") / "server.log", api_key=API_KEY) as running:
        yield running
