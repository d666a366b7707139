"""The adaptation methods: which parameters train, how the adapter is saved, and how it is loaded back.

* sparta: SpaRTA sparse deltas on a random `density` of each targeted weight, plus the fully trained head.
* lora / dora: PEFT LoRA (DoRA: `use_dora=True`) on the targets; task type SEQ_CLS with the `score` head in
  `modules_to_save`, so the head trains as well.
* head: only the classification head.
* full: every parameter, embeddings included, as in the paper's Full FT ("all model parameters are optimized").
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sparta.errors import SpartaError
from sparta.train.config import TrainConfig
from sparta.train.heads import get_head

ADAPTER_DIR = "adapter"  # sparta, lora, dora, head (head.safetensors)
MODEL_DIR = "model"  # full: a complete save_pretrained of the model
HEAD_FILE = "head.safetensors"


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout probability in the model (nn.Dropout modules and attention_dropout attributes).

    Call before wrapping with PEFT so LoRA's own dropout keeps its setting. Returns how many places were set.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
            count += 1
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
            count += 1
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for key in (
        "attention_dropout",
        "hidden_dropout",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
        "dropout",
    ):
        if isinstance(getattr(config, key, None), float):
            setattr(config, key, p)
    return count


def _target_arg(targets: list[str]) -> str | list[str]:
    return "all-linear" if targets == ["all-linear"] else targets


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    """PEFT's own error does not say what exists: name the Linear modules when a target matches none."""
    if targets == ["all-linear"]:
        return
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if unmatched:
        available = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise SpartaError(
            f"targets {unmatched} match no Linear module; Linear module names available: {', '.join(available)}"
        )


def apply_method(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Wrap or freeze `model` for cfg.method; the head must already be initialised."""
    if cfg.method == "sparta":
        from sparta import SpartaConfig, get_sparta_model

        config = SpartaConfig(
            density=cfg.density,
            target_modules=_target_arg(cfg.target_modules),
            seed=cfg.seed if cfg.index_seed is None else cfg.index_seed,
        )
        return get_sparta_model(model, config)
    if cfg.method in ("lora", "dora"):
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=_target_arg(cfg.target_modules),
            use_dora=cfg.method == "dora",
            modules_to_save=["score"],
        )
        _check_targets(model, cfg.target_modules)
        try:
            return get_peft_model(model, config)
        except ValueError as err:
            raise SpartaError(f"cannot apply {cfg.method}: {err}") from None
    if cfg.method == "head":
        model.requires_grad_(False)
        get_head(model).requires_grad_(True)
        return model
    if cfg.method == "full":
        model.requires_grad_(True)
        return model
    raise SpartaError(f"unknown method {cfg.method!r}")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; adapters report their own (total = base model + adapter)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable tensors only (what early stopping keeps in memory)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: no weight decay on biases and normalisation weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith(".bias") or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_adapter(model: nn.Module, method: str, output: Path, cfg: TrainConfig | None = None) -> Path:
    """Save what the method trained under `output` (into a temp folder renamed when complete); returns the folder."""
    from sparta.train.checkpoint import atomic_dir

    if method not in ("sparta", "lora", "dora", "head", "full"):
        raise SpartaError(f"unknown method {method!r}")
    path = output / (MODEL_DIR if method == "full" else ADAPTER_DIR)
    with atomic_dir(path) as tmp:
        if method == "sparta":
            index_format = cfg.save_index_format if cfg else "seed"
            model.save_pretrained(
                tmp, index_format=index_format, delta_dtype=cfg.save_delta_dtype if cfg else "float32"
            )
        elif method == "head":
            from safetensors.torch import save_file

            head = get_head(model)
            save_file({"weight": head.weight.detach().contiguous().cpu()}, str(tmp / HEAD_FILE))
        else:  # lora, dora (PEFT adapter files), full (a complete HF model dir)
            model.save_pretrained(str(tmp))
    return path


def load_adapter(base: nn.Module, method: str, run_dir: Path) -> nn.Module:
    """Attach a saved adapter to a freshly loaded base model (not used for `full`, which loads its own model)."""
    path = run_dir / ADAPTER_DIR
    if not path.is_dir():
        raise SpartaError(f"{run_dir} has no {ADAPTER_DIR}/ folder; is it a finished training run?")
    if method == "sparta":
        from sparta import SpartaModel

        return SpartaModel.from_pretrained(base, str(path))
    if method in ("lora", "dora"):
        from peft import PeftModel

        try:
            return PeftModel.from_pretrained(base, str(path))
        except (
            Exception
        ) as err:  # PEFT/safetensors raise many types on missing, truncated or mismatched files
            raise SpartaError(f"cannot load the {method} adapter in {path}: {_one_line(err)}") from None
    if method == "head":
        from safetensors.torch import load_file

        head = get_head(base)
        try:
            weight = load_file(str(path / HEAD_FILE))["weight"]
        except Exception as err:
            raise SpartaError(f"cannot load the head in {path / HEAD_FILE}: {_one_line(err)}") from None
        if weight.shape != head.weight.shape:
            raise SpartaError(
                f"{path / HEAD_FILE} holds a {tuple(weight.shape)} head; this model needs {tuple(head.weight.shape)}"
            )
        with torch.no_grad():
            head.weight.copy_(weight.to(head.weight.dtype))
        return base
    raise SpartaError(f"cannot load an adapter for method {method!r}")


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


def dir_bytes(path: Path) -> int:
    """Total size of a file or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
