"""Causal-LM (SFT) runs for the generation, export and merge tests, written directly (no training): a tiny causal
LM from tinylm.py with a SpaRTA, LoRA or full-fine-tuning change of random size, saved as `sparta train` saves a
language-modelling run (adapter/ or model/, tokenizer/, run.json with objective "language-modelling")."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from sparta import SpartaConfig, get_sparta_model
from sparta.runs import untie_lm_head


def run_info(base: Path, method: str, lm_head: str = "frozen", task: dict | None = None, **kw) -> dict:
    """A run.json of a language-modelling run (the fields `sparta.train.outputs.run_info` writes, plus the SFT
    settings)."""
    return {
        "format": 1,
        "method": method,
        "objective": "language-modelling",
        "model": str(base),
        "model_path": str(base),
        "instruct": True,
        "task": task,
        "template": None,
        "num_labels": 0,
        "label_names": [],
        "padding_side": "right",
        "max_length": 128,
        "seed": 0,
        "dtype": "float32",
        "adapter": "model" if method == "full" else "adapter",
        "loss_on": "assistant",
        "lm_head": lm_head,
        **kw,
    }


def _perturb(tensor: torch.Tensor, scale: float) -> None:
    with torch.no_grad():
        tensor.add_(scale * torch.randn_like(tensor))


def write_sft_run(
    out: Path,
    base: Path,
    method: str = "sparta",
    *,
    lm_head: str = "frozen",
    seed: int = 0,
    density: float = 0.2,
    task: dict | None = None,
    instruct: bool = True,
) -> Path:
    """An SFT run dir on the tiny causal LM in `base`, its trained change drawn from `seed`."""
    torch.manual_seed(seed + 1000)
    net = AutoModelForCausalLM.from_pretrained(str(base))
    untied = lm_head != "frozen" and untie_lm_head(net)
    out.mkdir(parents=True)
    if method == "sparta":
        heads = ["lm_head"] if lm_head == "train" else []
        targets = "all-linear" if lm_head != "sparse" else r".*(proj|lm_head)"
        model = get_sparta_model(
            net, SpartaConfig(density=density, target_modules=targets, seed=seed, head_modules=heads)
        )
        for p in model.delta_parameters().values():
            _perturb(p, 0.5)
        for p in model.head_parameters().values():
            _perturb(p, 0.5)
        model.save_pretrained(out / "adapter")
    elif method == "lora":
        config = LoraConfig(
            task_type="CAUSAL_LM",
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
        )
        get_peft_model(net, config).save_pretrained(str(out / "adapter"))
    elif method == "full":
        for p in net.parameters():
            _perturb(p, 0.05)
        net.save_pretrained(out / "model")
    else:
        raise ValueError(method)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(out / "tokenizer")
    info = run_info(base, method, lm_head, task, instruct=instruct, seed=seed, lm_head_untied=untied)
    (out / "run.json").write_text(json.dumps(info, indent=1))
    return out
