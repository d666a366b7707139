"""Switching adapters on one loaded SmolLM2-135M-Instruct (causal LM, fp32, CPU); not a test.

SpaRTA keeps several adapters loaded and switches the live one in place (`SpartaModel.set_adapter`: O(m) scatters
from the saved originals). Measured, all in one process, medians over `--reps` switches (each switch back and forth
counts once):

* SpaRTA `set_adapter` at LoRA r=8 (q,v)'s budget (Wv,Wo, 3.47%) and on every block Linear at 1%;
* reloading instead: the base model from disk plus the adapter (`SpartaModel.from_pretrained`);
* PEFT LoRA r=8 (q,v): `set_adapter` with the adapters unmerged; with the active one merged into the weights
  (`unmerge_adapter` + `set_adapter` + `merge_adapter`); and PEFT's `hotswap_adapter` (reads the other adapter's
  file into the live one);
* then the time of one forward (batch 4 x 64 tokens) of each state: the base model, merged SpaRTA, unmerged LoRA.

    .venv/bin/python bench/switch_speed.py [--reps 20] [--threads 2] [--out bench/results/switch.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.hotswap import hotswap_adapter

from sparta import SpartaConfig, SpartaModel, get_sparta_model
from sparta.models import DEFAULT_MODEL, load_model, quiet_transformers, resolve_model

LORA_BUDGET_VO = 0.0347  # Wv,Wo density at LoRA r=8 (q,v)'s 460,800 trainable (README)


def base():
    with quiet_transformers():
        return load_model(resolve_model(DEFAULT_MODEL), task="causal-lm")


def sparta_adapters(root: Path, targets, density: float) -> list[Path]:
    paths = []
    for seed in (1, 2):
        model = get_sparta_model(base(), SpartaConfig(density=density, target_modules=targets, seed=seed))
        with torch.no_grad():
            for p in model.delta_parameters().values():
                p.normal_(std=1e-3)
        paths.append(model.save_pretrained(root / f"sparta-{density}-{seed}"))
    return paths


def lora_adapters(root: Path) -> list[Path]:
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(base(), cfg)
        model.save_pretrained(str(root / f"lora-{seed}"))
        paths.append(root / f"lora-{seed}")
    return paths


def median_seconds(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def toggler(switch, names):
    state = {"i": 0}

    def step():
        state["i"] += 1
        switch(names[state["i"] % 2])

    return step


@torch.no_grad()
def forward_seconds(model, ids, reps):
    model(input_ids=ids)
    return median_seconds(lambda: model(input_ids=ids), reps)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/switch.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ids = torch.randint(0, 49152, (4, 64), generator=torch.Generator().manual_seed(0))
    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for label, targets, density in (
            ("sparta Wv,Wo LoRA budget", ["v_proj", "o_proj"], LORA_BUDGET_VO),
            ("sparta all-linear 1%", "all-linear", 0.01),
        ):
            a, b = sparta_adapters(root, targets, density)
            model = SpartaModel.from_pretrained(base(), a, adapter_name="a")
            model.load_adapter(b, "b")
            rows[f"{label}: set_adapter"] = median_seconds(toggler(model.set_adapter, ["a", "b"]), args.reps)
            rows[f"{label}: reload base + adapter"] = median_seconds(
                lambda b=b: SpartaModel.from_pretrained(base(), b), max(3, args.reps // 5)
            )
            if density == LORA_BUDGET_VO:
                rows["forward: merged sparta"] = forward_seconds(model, ids, args.reps)
        la, lb = lora_adapters(root)
        peft_model = PeftModel.from_pretrained(base(), str(la), adapter_name="a")
        peft_model.load_adapter(str(lb), adapter_name="b")
        rows["lora: set_adapter (unmerged)"] = median_seconds(
            toggler(peft_model.set_adapter, ["a", "b"]), args.reps
        )
        rows["forward: unmerged lora"] = forward_seconds(peft_model, ids, args.reps)

        def merged_switch(name):
            peft_model.unmerge_adapter()
            peft_model.set_adapter(name)
            peft_model.merge_adapter()

        peft_model.merge_adapter()
        rows["lora: unmerge + set_adapter + merge"] = median_seconds(
            toggler(merged_switch, ["a", "b"]), args.reps
        )
        hot = PeftModel.from_pretrained(base(), str(la))
        rows["lora: hotswap_adapter"] = median_seconds(
            toggler(lambda p: hotswap_adapter(hot, str(p), adapter_name="default"), [la, lb]), args.reps
        )
        rows["forward: base model"] = forward_seconds(base(), ids, args.reps)
    ref = rows["sparta Wv,Wo LoRA budget: set_adapter"]
    print(f"{'what':<48} {'median s':>10} {'x sparta Wv,Wo switch':>22}")
    for key, value in rows.items():
        print(f"{key:<48} {value:>10.5f} {value / ref:>22.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"threads": args.threads, "reps": args.reps, "seconds": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
