"""One benchmark process: SmolLM2 as a 2-label classifier, one method, W warm-up + S timed steps.

    python bench/worker.py METHOD [--warmup W] [--steps S] [--threads T] --json OUT
    python bench/worker.py A:B ...      (paired: both methods in one process, steps alternated)

A training step is forward (with labels) -> loss.backward() -> AdamW.step() -> zero_grad() on a fixed random
8 x 64 batch; `infer-*` methods time a no-grad forward instead. Writes one JSON object to OUT (an `error` key
when the method cannot run). Methods are listed in METHODS; `make bench` installs peft-sparta into bench/.deps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

BENCH_DIR = Path(__file__).resolve().parent
DEPS_DIR = BENCH_DIR / ".deps"  # peft-sparta==0.0.3 (pip --target, --no-deps): the main .venv stays as pinned
MODEL = "smollm2-135m-instruct"
BATCH, SEQ, LORA_R = 8, 64, 8
LORA_TARGETS = ["q_proj", "v_proj"]
VO = ["v_proj", "o_proj"]
PS_DEFAULT_FROZEN = ["embed_tokens", "self_attn.q", "self_attn.k", "mlp", "norm"]  # leaves v_proj, o_proj
PS_ALL_LINEAR_FROZEN = ["embed_tokens", "norm"]  # leaves every Linear of the blocks

METHODS = {
    "lora": "PEFT LoRA r=8 on q_proj,v_proj",
    "sparta-vo": "SpaRTA v_proj,o_proj at the LoRA budget",
    "sparta-all-0.5": "SpaRTA all-linear, density 0.5%",
    "sparta-all-5": "SpaRTA all-linear, density 5%",
    "shira-vo": "PEFT SHiRA random mask on v_proj,o_proj, r for the LoRA budget",
    "peft-sparta-vo": "peft-sparta 0.0.3 on v_proj,o_proj at the LoRA budget",
    "peft-sparta-all-5": "peft-sparta 0.0.3 all-linear, density 5%",
    "reference-vo": "SpaRTA Algorithm 1 (sparta.adapter.reference) on v_proj,o_proj at the LoRA budget",
    "full": "full fine-tuning",
    "head": "head only (score)",
    "infer-base": "inference forward, base model",
    "infer-merged": "inference forward, merged SpaRTA model (v_proj,o_proj at the LoRA budget)",
}


def rss_mb() -> float:
    """Current resident set size (MB), from /proc/self/statm."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def maxrss_mb() -> float:
    """Peak RSS of the process so far (MB): getrusage's ru_maxrss (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hwm_mb() -> float:
    """VmHWM (MB): the peak RSS since the last `reset_hwm()`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); ru_maxrss is not affected."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def count(params) -> int:  # noqa: ANN001
    return sum(p.numel() for p in params)


def lora_budget(model: nn.Module) -> int:
    """Trainable parameters of LoRA r=8 on q_proj and v_proj (the head excluded): r * (in + out) per module."""
    return sum(
        LORA_R * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in LORA_TARGETS
    )


def linear_numel(model: nn.Module, suffixes: list[str] | None) -> int:
    """Elements of the Linear weights inside the blocks whose name ends with one of `suffixes` (None: all)."""
    return sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and ".layers." in n
        and (suffixes is None or n.rsplit(".", 1)[-1] in suffixes)
    )


def load(seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """SmolLM2 as a 2-label sequence classifier (pad token set) and a fixed random batch."""
    from sparta.models import load_model, resolve_model

    model = load_model(resolve_model(MODEL), task="classification", num_labels=2)
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    # ids above the special tokens, so that no pad token shortens the sequences
    input_ids = torch.randint(16, vocab, (BATCH, SEQ), generator=gen)
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.randint(0, 2, (BATCH,), generator=gen),
    }
    torch.manual_seed(seed)
    return model, batch


# -- methods: each returns (module to call, trainable params, info); the module's output has .loss ------------
def setup_peft(model: nn.Module, kind: str, info: dict) -> tuple[nn.Module, list[nn.Parameter]]:
    from peft import LoraConfig, ShiraConfig, get_peft_model

    if kind == "lora":
        config = LoraConfig(
            task_type="SEQ_CLS",
            r=LORA_R,
            lora_alpha=2 * LORA_R,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
        )
    else:  # SHiRA: r * (in + out) parameters per module, like LoRA; r chosen for the LoRA budget
        fan = sum(
            m.in_features + m.out_features
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in VO
        )
        info["shira_r"] = max(1, round(info["budget"] / fan))
        config = ShiraConfig(task_type="SEQ_CLS", r=info["shira_r"], target_modules=VO, random_seed=0)
    peft_model = get_peft_model(model, config)
    return peft_model, [p for p in peft_model.parameters() if p.requires_grad]


def save_peft_bf16(peft_model: nn.Module, info: dict) -> None:
    """PEFT's adapter (config + state dict, floating tensors cast to bf16): bytes per trainable parameter."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(peft_model)
    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    with tempfile.TemporaryDirectory() as tmp:
        save_file(state, os.path.join(tmp, "adapter_model.safetensors"))
        peft_model.peft_config["default"].save_pretrained(tmp)
        info["adapter_bytes"] = dir_bytes(Path(tmp))
        info["adapter_format"] = "peft, bf16"


def sparta_config(name: str, info: dict):  # noqa: ANN201
    from sparta.adapter import SpartaConfig

    if name.endswith("-vo"):
        return SpartaConfig(density=info["vo_density"], target_modules=VO, seed=0)
    return SpartaConfig(density=float(name.rsplit("-", 1)[1]) / 100, target_modules="all-linear", seed=0)


def setup_peft_sparta(model: nn.Module, name: str, info: dict) -> tuple[nn.Module, list[nn.Parameter]]:
    sys.path.insert(0, str(DEPS_DIR))
    try:
        from peft_sparta import SpaRTA
    except ImportError as err:
        raise RuntimeError(
            f"peft-sparta is not installed in {DEPS_DIR} ({err}); `make bench` installs it "
            f"(pip install --no-deps --target bench/.deps peft-sparta==0.0.3)"
        ) from None
    frozen = PS_DEFAULT_FROZEN if name.endswith("-vo") else PS_ALL_LINEAR_FROZEN
    density = info["vo_density"] if name.endswith("-vo") else float(name.rsplit("-", 1)[1]) / 100
    # peft-sparta asks for a sparsity over *all* parameters; its keep probability on the non-frozen
    # tensors is ((1 - sparsity) * total - head) / nonfrozen, so solve that for `density`.
    total = count(model.parameters())
    head = model.score.weight.numel()
    nonfrozen = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n != "score.weight" and not any(k in n for k in frozen)
    )
    sparsity = 1 - (density * nonfrozen + head) / total
    info.update(peft_sparta_sparsity=sparsity, peft_sparta_frozen=frozen)
    wrapped = SpaRTA(model, sparsity=sparsity, frozen_modules=frozen)
    return wrapped, list(wrapped.parameters())


def setup_reference(model: nn.Module, info: dict) -> tuple[Callable, list[nn.Parameter]]:
    """Algorithm 1 on the same phi as sparta-vo; returns a step-forward-backward callable instead of a module."""
    import numpy as np

    from sparta.adapter import find_targets
    from sparta.adapter.reference import ReferenceSparta
    from sparta.adapter.sampling import sample_indices

    config = sparta_config("sparta-vo", info)
    indices = {
        t.name: torch.from_numpy(
            sample_indices(int(np.prod(t.shape)), t.density, config.seed, t.name, t.shape)
        )
        for t in find_targets(model, config)
    }
    ref = ReferenceSparta(model, indices, head_params=["score.weight"])
    return ref, ref.parameters()


def build(name: str, model: nn.Module, info: dict):  # noqa: ANN201
    """(callable or module, trainable params) for a training method."""
    if name in ("lora", "shira-vo"):
        return setup_peft(model, name.split("-")[0], info)
    if name.startswith("sparta-"):
        from sparta.adapter import get_sparta_model

        sm = get_sparta_model(model, sparta_config(name, info))
        return sm, [p for p in sm.parameters() if p.requires_grad]
    if name.startswith("peft-sparta-"):
        return setup_peft_sparta(model, name, info)
    if name == "reference-vo":
        return setup_reference(model, info)
    if name == "full":
        return model, list(model.parameters())
    if name == "head":
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("score."))
        return model, [p for p in model.parameters() if p.requires_grad]
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def save_adapter(name: str, wrapped, info: dict) -> None:  # noqa: ANN001
    if name.startswith("sparta-"):
        with tempfile.TemporaryDirectory() as tmp:
            wrapped.save_pretrained(tmp, index_format="seed", delta_dtype="bfloat16")
            info["adapter_bytes"] = dir_bytes(Path(tmp))
            info["adapter_format"] = "sparta seed, bf16"
    elif name in ("lora", "shira-vo"):
        save_peft_bf16(wrapped, info)
    elif name.startswith("peft-sparta-"):
        with tempfile.TemporaryDirectory() as tmp:
            wrapped.save(tmp, merged=False)  # its own format: int32 (row, col) pairs + fp32 deltas + config
            info["adapter_bytes"] = dir_bytes(Path(tmp))
            info["adapter_format"] = "peft-sparta native (int32 pairs, fp32)"


# -- timing ----------------------------------------------------------------------------------------------------
def profile_step(step: Callable[[], None], path: str, info: dict) -> None:
    """One more step under torch.profiler: the ops by self CPU time, written to `path`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    Path(path).write_text(table)
    info["profile"] = path


def training_step(name: str, wrapped, batch: dict) -> Callable[[], tuple[float, float]]:  # noqa: ANN001
    """forward + backward of one method: returns (forward seconds, loss)."""
    if name == "reference-vo":

        def forward_backward() -> tuple[float, float]:
            loss = wrapped.forward_backward(lambda m: m(**batch).loss)
            return 0.0, float(loss)  # forward and backward are one call here

        return forward_backward
    wrapped.train()

    def forward_backward() -> tuple[float, float]:
        t0 = time.perf_counter()
        loss = wrapped(**batch).loss
        t1 = time.perf_counter()
        loss.backward()
        return t1 - t0, loss.item()

    return forward_backward


def run_training(
    name: str, model: nn.Module, batch: dict, warmup: int, steps: int, info: dict, profile: str | None
) -> dict:
    wrapped, params = build(name, model, info)
    info["trainable_params"] = count(params)
    info["rss_setup_mb"] = rss_mb()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    forward_backward = training_step(name, wrapped, batch)
    reset_hwm()
    times: dict[str, list[float]] = {"step": [], "forward": [], "backward": [], "optimizer": [], "cpu": []}
    losses = []
    for i in range(warmup + steps):
        c0 = time.process_time()  # CPU seconds of all threads: steadier than wall time on a shared machine
        t0 = time.perf_counter()
        fwd, loss = forward_backward()
        t1 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        c2 = time.process_time()
        losses.append(loss)
        if i >= warmup:
            times["step"].append(t2 - t0)
            times["cpu"].append(c2 - c0)
            times["forward"].append(fwd)
            times["backward"].append(t1 - t0 - fwd)
            times["optimizer"].append(t2 - t1)
    info["train_hwm_mb"] = hwm_mb()
    info["peak_rss_mb"] = maxrss_mb()
    if profile:

        def step() -> None:
            with torch.profiler.record_function("## forward+backward"):
                forward_backward()
            with torch.profiler.record_function("## optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        profile_step(step, profile, info)
    info["losses"] = losses
    info["step_times"] = times["step"]
    info.update({f"{k}_s": statistics.median(v) for k, v in times.items()})
    save_adapter(name, wrapped, info)
    if "adapter_bytes" in info:
        info["adapter_bytes_per_param"] = info["adapter_bytes"] / info["trainable_params"]
    return info


def inference_model(name: str, model: nn.Module, info: dict) -> nn.Module:
    """The base model (infer-base) or a merged SpaRTA v,o model with random deltas (infer-merged), in eval mode."""
    if name == "infer-merged":
        from sparta.adapter import get_sparta_model

        sm = get_sparta_model(model, sparta_config("sparta-vo", info))
        with torch.no_grad():
            for p in sm.parameters():
                if p.requires_grad:
                    p.normal_(0.0, 1e-3)
        model = sm.merge_and_unload()
    return model.eval()


def run_inference(
    name: str, model: nn.Module, batch: dict, warmup: int, steps: int, info: dict, profile: str | None
) -> dict:
    model = inference_model(name, model, info)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    reset_hwm()
    times = []
    with torch.inference_mode():
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            model(**inputs)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    info.update(
        trainable_params=0,
        step_s=statistics.median(times),
        step_times=times,
        train_hwm_mb=hwm_mb(),
        peak_rss_mb=maxrss_mb(),
    )
    return info


def run_paired(names: list[str], warmup: int, steps: int, info: dict) -> dict:
    """Two methods in one process, their steps (training, or inference forwards) alternated A B B A ...: both
    see the same machine state at the same time, so the per-pair time ratio is far steadier on a shared machine
    than the ratio of two processes' medians. Peak memory is not measured here (both models share the process)."""
    runs: list[Callable[[], float]] = []
    for name in names:
        model, batch = load()
        if name.startswith("infer-"):
            net = inference_model(name, model, info)
            inputs = {k: v for k, v in batch.items() if k != "labels"}

            def step(net=net, inputs=inputs) -> float:
                t0 = time.perf_counter()
                with torch.inference_mode():
                    net(**inputs)
                return time.perf_counter() - t0

        else:
            wrapped, params = build(name, model, info)
            optimizer = torch.optim.AdamW(params, lr=1e-4)
            forward_backward = training_step(name, wrapped, batch)

            def step(forward_backward=forward_backward, optimizer=optimizer) -> float:
                t0 = time.perf_counter()
                forward_backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return time.perf_counter() - t0

        runs.append(step)
    for _ in range(warmup):
        for step in runs:
            step()
    times: list[list[float]] = [[], []]
    for i in range(steps):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for k in order:
            times[k].append(runs[k]())
    ratios = sorted(a / b for a, b in zip(*times, strict=True))
    quartile = max(1, len(ratios) // 4)
    info.update(
        pair=names,
        step_s={name: statistics.median(t) for name, t in zip(names, times, strict=True)},
        step_times={name: t for name, t in zip(names, times, strict=True)},
        ratio_median=statistics.median(ratios),
        ratio_iqr=[ratios[quartile - 1], ratios[-quartile]],
    )
    return info


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("method", help=f"one of {', '.join(METHODS)}, or A:B for a paired A/B run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", required=True, help="where to write the result")
    parser.add_argument("--profile", help="profile one extra training step; write the op table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.method.split(":")
    kinds = {n.startswith("infer-") for n in names}
    if any(n not in METHODS for n in names) or len(names) > 2 or len(kinds) > 1:
        parser.error(
            f"method must be one of {', '.join(METHODS)}, or A:B of two training or two inference methods"
        )
    description = " vs ".join(METHODS[n] for n in names)
    info: dict = {"method": args.method, "description": description, "threads": args.threads}
    try:
        t0 = time.perf_counter()
        model, batch = load()
        info.update(load_s=time.perf_counter() - t0, rss_load_mb=rss_mb(), maxrss_load_mb=maxrss_mb())
        info["budget"] = lora_budget(model)
        info["vo_density"] = info["budget"] / linear_numel(model, VO)
        if ":" in args.method:
            del model, batch  # each side of the pair loads its own copy
            run_paired(args.method.split(":"), args.warmup, args.steps, info)
        else:
            run = run_inference if args.method.startswith("infer-") else run_training
            run(args.method, model, batch, args.warmup, args.steps, info, args.profile)
        rc = 0
    except Exception as err:  # a method that cannot run is a result too
        info["error"] = f"{type(err).__name__}: {err}"
        info["traceback"] = traceback.format_exc()
        rc = 1
    Path(args.json).write_text(json.dumps(info, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())
