"""fp32 against bf16-mixed: training step time and peak memory, evaluation and generation throughput.

    .venv/bin/python bench/precision.py [--rounds 4] [--threads 2] [--shapes cls,sft] [--out bench/results]

Every timing is paired: one process holds every method's model, and each round times one step of every
(method, precision) in a shuffled order, so the two precisions of one method, and two methods in one precision,
see the same machine at nearly the same moment; a ratio is the median over rounds of the per-round ratios.
The steps are sparta's own: `Method.apply` (SpaRTA v_proj,o_proj at LoRA r=8 (q,v)'s budget, PEFT LoRA r=8 on
q,v, full fine-tuning) and the objectives' `batch_loss` (classification 8 x 64 tokens; SFT 8 x 256 tokens with
the loss on the last 128 of each row, through the chunked LM head) under `sparta.precision.autocast`, then
backward, AdamW and zero_grad. The "floor" is the frozen model whose embeddings' output requires grad: forward
and a backward through every block, no weight gradient: what any adapter inside the blocks must pay at least.

Peak memory is per (shape, method, precision), each in a fresh process (`--one`): the peak RSS over 3 steps
minus the RSS before the first step (the model and optimizer are already there; the high-water mark is reset
there), i.e. what the steps add: activations, gradients and the optimizer state AdamW creates at its first step.
Evaluation is a no-grad forward of the SFT batch (tokens/s); generation is greedy decoding of 48 new tokens for
8 prompts (new tokens/s). Writes precision.md and precision.json under --out.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from sparta.methods import get_method
from sparta.models import load_model, load_tokenizer, resolve_model
from sparta.objectives import OBJECTIVES
from sparta.objectives.classification import Encoded
from sparta.objectives.generation import generate
from sparta.objectives.language_modelling import LMEncoded
from sparta.precision import autocast, cpu_bf16_instructions
from sparta.train.setup import enable_gradient_checkpointing

MODEL = "smollm2-135m-instruct"
PRECISIONS = ("fp32", "bf16-mixed")
METHODS = ("floor", "sparta-vo", "lora", "full")
SHAPES = {"cls": (8, 64), "sft": (8, 256)}
LOSS_TOKENS = 128  # SFT: loss on the last 128 tokens of each row
CPU = torch.device("cpu")


def lora_budget(model: nn.Module) -> int:
    return sum(
        8 * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in ("q_proj", "v_proj")
    )


def vo_density(model: nn.Module) -> float:
    numel = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in ("v_proj", "o_proj")
    )
    return lora_budget(model) / numel


def settings(method: str, model: nn.Module) -> SimpleNamespace:
    """What `Method.apply` reads of a run's config."""
    targets = {"sparta-vo": ["v_proj", "o_proj"], "lora": ["q_proj", "v_proj"]}.get(method)
    return SimpleNamespace(
        density=vo_density(model),
        targets=targets,
        seed=0,
        index_seed=None,
        lm_head="frozen",
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        delta_dtype="float32",
        train_head=True,
    )


def build(shape: str, method: str, seed: int = 0, checkpointing: bool = False):  # noqa: ANN201
    """(trainable model, objective, encoded batch, AdamW or None) of one shape and method; `checkpointing`:
    every block's activations recomputed in backward (`sparta train --gradient-checkpointing`)."""
    batch, seq = SHAPES[shape]
    kind = "classification" if shape == "cls" else "causal-lm"
    model = load_model(resolve_model(MODEL), task=kind, num_labels=2 if shape == "cls" else None)
    model.config.pad_token_id = 0
    if checkpointing:
        enable_gradient_checkpointing(model)
    objective = OBJECTIVES["classification" if shape == "cls" else "language-modelling"]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(16, model.config.vocab_size, (batch, seq), generator=g).tolist()
    if shape == "cls":
        data = Encoded(ids, torch.randint(0, 2, (batch,), generator=g).tolist())
    else:
        masks = [[0] * (seq - LOSS_TOKENS) + [1] * LOSS_TOKENS for _ in ids]
        data = LMEncoded(ids, masks, [row[:8] for row in ids], [""] * batch)
    if method == "floor":
        for p in model.parameters():
            p.requires_grad_(False)
        model.enable_input_require_grads()
        return model.train(), objective, data, None
    if method == "peft-sparta-vo":
        net = peft_sparta_vo(model)
        return net, objective, data, torch.optim.AdamW(list(net.parameters()), lr=1e-5)
    cfg = settings(method, model)
    net = get_method("sparta" if method == "sparta-vo" else method).apply(model, cfg, objective)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    return net, objective, data, torch.optim.AdamW(params, lr=1e-5)


def peft_sparta_vo(model: nn.Module) -> nn.Module:
    """peft-sparta 0.0.3 (`make bench` installs it into bench/.deps) on v_proj,o_proj at LoRA r=8's budget: its
    `SpaRTA` wrapper, whose forward writes W0 + delta into the weights and calls the model."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / ".deps"))
    from peft_sparta import SpaRTA

    frozen = ["embed_tokens", "self_attn.q", "self_attn.k", "mlp", "norm"]  # leaves v_proj and o_proj
    total = sum(p.numel() for p in model.parameters())
    open_to_sampling = sum(p.numel() for n, p in model.named_parameters() if not any(k in n for k in frozen))
    # peft-sparta takes a sparsity over all parameters and keeps (1 - sparsity) * total of the unfrozen ones
    wrapped = SpaRTA(model, sparsity=1 - vo_density(model) * open_to_sampling / total, frozen_modules=frozen)
    # sparta's objectives find the transformers model inside an engine wrapper through `.module`
    object.__setattr__(wrapped, "module", model)
    return wrapped


def step(net, objective, data, optimizer, precision: str) -> float:  # noqa: ANN001
    """One training step in `precision`; its seconds."""
    t0 = time.perf_counter()
    with autocast(precision, CPU):
        loss = objective.batch_loss(net, data, list(range(len(data))), 0, "right", CPU)
    loss.float().backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def paired_steps(shape: str, rounds: int, warmup: int) -> dict:
    """Step seconds of every (method, precision), all in this process, shuffled within each round."""
    built = {m: build(shape, m) for m in METHODS}
    cells = [(m, p) for m in METHODS for p in PRECISIONS]
    for m, p in cells * warmup:
        step(*built[m], p)
    order = random.Random(0)
    times: dict[tuple[str, str], list[float]] = {c: [] for c in cells}
    for _ in range(rounds):
        for m, p in order.sample(cells, len(cells)):
            times[(m, p)].append(step(*built[m], p))
    return {f"{m}|{p}": t for (m, p), t in times.items()}


def ratio(times: dict, a: str, b: str) -> dict:
    """Median (and range) over rounds of a's step time / b's."""
    r = [x / y for x, y in zip(times[a], times[b], strict=True)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r)}


def one(shape: str, method: str, precision: str, checkpointing: bool = False) -> dict:
    """Peak RSS added by 3 steps of one cell (run in a fresh process): the high-water mark is reset to the current
    RSS once the model and optimizer are built (Linux: `clear_refs`), so loading does not count."""
    net, objective, data, optimizer = build(shape, method, checkpointing=checkpointing)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mb("VmRSS")
    seconds = [step(net, objective, data, optimizer, precision) for _ in range(3)]
    peak = _status_mb("VmHWM")
    return {"rss_before_mb": before, "peak_rss_mb": peak, "step_added_mb": peak - before, "seconds": seconds}


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def inference(rounds: int) -> dict:
    """Evaluation forward (tokens/s) and greedy generation (new tokens/s), fp32 and bf16-mixed, paired."""
    model = load_model(resolve_model(MODEL), task="causal-lm").eval()
    tokenizer = load_tokenizer(resolve_model(MODEL))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(16, model.config.vocab_size, SHAPES["sft"], generator=g)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"What is {7 * k} times {k + 3}?"}], add_generation_prompt=True
        )
        for k in range(8)
    ]
    prompts = [p if isinstance(p, list) else p["input_ids"] for p in prompts]
    new_tokens = 48

    @torch.no_grad()
    def forward(precision: str) -> float:
        t0 = time.perf_counter()
        with autocast(precision, CPU):
            model(input_ids=ids, logits_to_keep=1)
        return ids.numel() / (time.perf_counter() - t0)

    def decode(precision: str) -> float:
        t0 = time.perf_counter()
        with autocast(precision, CPU):
            texts = generate(model, tokenizer, prompts, max_new_tokens=new_tokens, batch_size=8)
        assert len(texts) == len(prompts)
        return (
            len(prompts) * new_tokens / (time.perf_counter() - t0)
        )  # upper bound: early stops count in full

    out = {}
    for name, fn in (("eval_tokens_per_s", forward), ("generate_tokens_per_s", decode)):
        fn("fp32")
        values: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for r in range(rounds):
            for p in PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]:
                values[p].append(fn(p))
        out[name] = values
    return out


def table(results: dict) -> str:
    lines = [
        f"# fp32 vs bf16-mixed (SmolLM2-135M-Instruct, {results['threads']} threads, CPU bf16: "
        f"{results['cpu_bf16']})",
        "",
    ]
    for shape, times in results["steps"].items():
        batch, seq = SHAPES[shape]
        lines += [
            f"## training step, {shape} {batch} x {seq}",
            "",
            "| method | fp32 s | bf16-mixed s | bf16 speed-up (paired) | bf16 / floor (bf16) | bf16 / LoRA (bf16) "
            "| step adds MB fp32 | bf16 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in METHODS:
            f32, b16 = times[f"{m}|fp32"], times[f"{m}|bf16-mixed"]
            speed = ratio(times, f"{m}|fp32", f"{m}|bf16-mixed")
            floor = ratio(times, f"{m}|bf16-mixed", "floor|bf16-mixed")
            lora = ratio(times, f"{m}|bf16-mixed", "lora|bf16-mixed")
            mem = results["memory"].get(shape, {}).get(m, {})
            mem_cells = " | ".join(f"{mem[p]['step_added_mb']:.0f}" if p in mem else "—" for p in PRECISIONS)
            lines.append(
                f"| {m} | {statistics.median(f32):.3f} | {statistics.median(b16):.3f} | "
                f"{speed['median']:.2f}x ({speed['min']:.2f}-{speed['max']:.2f}) | {floor['median']:.3f} | "
                f"{lora['median']:.3f} | {mem_cells} |"
            )
        lines.append("")
    inf = results.get("inference")
    if inf:
        lines += [
            "## inference",
            "",
            "| what | fp32 | bf16-mixed | speed-up (paired) |",
            "|---|---:|---:|---:|",
        ]
        for name, values in inf.items():
            per = [b / a for a, b in zip(values["fp32"], values["bf16-mixed"], strict=True)]
            lines.append(
                f"| {name} | {statistics.median(values['fp32']):.0f} | "
                f"{statistics.median(values['bf16-mixed']):.0f} | {statistics.median(per):.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default="cls,sft")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # SHAPE:METHOD:PRECISION, in a fresh process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one(*args.one.split(":"))))
        return
    shapes = [s for s in args.shapes.split(",") if s]
    results: dict = {
        "threads": args.threads,
        "cpu_bf16": cpu_bf16_instructions(),
        "rounds": args.rounds,
        "torch": torch.__version__,
        "steps": {},
        "memory": {},
    }
    for shape in shapes:
        results["steps"][shape] = paired_steps(shape, args.rounds, args.warmup)
        print(f"{shape}: steps done", file=sys.stderr)
        if not args.no_memory:
            results["memory"][shape] = {}
            for m in METHODS:
                results["memory"][shape][m] = {}
                for p in PRECISIONS:
                    cmd = [
                        sys.executable,
                        __file__,
                        "--threads",
                        str(args.threads),
                        "--one",
                        f"{shape}:{m}:{p}",
                    ]
                    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    results["memory"][shape][m][p] = json.loads(done.stdout.strip().splitlines()[-1])
    if not args.no_inference:
        results["inference"] = inference(args.rounds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision.json").write_text(json.dumps(results, indent=1))
    (out / "precision.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
