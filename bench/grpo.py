"""GRPO acceptance: SpaRTA at LoRA r=8's parameter budget against LoRA r=8 on the generated arithmetic task.

    .venv/bin/python bench/grpo.py [--difficulty 2] [--steps 200] [--seeds 0,1] [--out bench/results/grpo]
    .venv/bin/python bench/grpo.py --smoke            # a few steps on 8 problems: checks the script runs

1. The base model (SmolLM2-135M-Instruct): greedy accuracy on the 500 held-out test problems, and sampled
   accuracy (one sample each at the runs' temperature) on the same problems.
2. Per seed: `sparta train --task arithmetic` with SpaRTA on v_proj,o_proj at density 3.47% (the trainable
   count of LoRA r=8 on q_proj,v_proj) and with LoRA r=8 (q_proj,v_proj), the same prompts per step,
   generations per prompt and steps, so the same number of rollouts; each run's final test accuracy (greedy,
   500 problems), its mean reward over the last 10% of steps, and the bytes an update costs to send.

Writes OUT/grpo.md and OUT/grpo.json; each run's directory (log.csv, results.json) stays under OUT/runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from sparta.models import load_model, load_tokenizer, resolve_model
from sparta.objectives import get_objective
from sparta.objectives.generation import generate
from sparta.tasks import exact_match, get_task, load_splits
from sparta.train import TrainConfig, train

MODEL = "smollm2-135m-instruct"
METHODS = {
    "sparta": {"method": "sparta", "density": 0.0347, "targets": ["v_proj", "o_proj"], "lr": 1e-4},
    "lora": {"method": "lora", "lora_r": 8, "targets": ["q_proj", "v_proj"], "lr": 1e-4},
}


def base_accuracy(difficulty: int, n: int, temperature: float, max_new_tokens: int, device: str) -> dict:
    """Greedy and sampled accuracy of the base model on `n` test problems."""
    task = get_task("arithmetic", difficulty=difficulty)
    resolved = resolve_model(MODEL)
    tokenizer = load_tokenizer(resolved)
    model = load_model(resolved, task="causal-lm").to(device).eval()
    # the problems the runs' final test accuracy is measured on (`max_eval_samples` draws them the same way)
    data = get_objective("grpo").encode(load_splits(task, max_eval_samples=n)["test"], task, tokenizer, True)
    out = {}
    for name, temp in (("greedy", 0.0), ("sampled", temperature)):
        texts = generate(
            model,
            tokenizer,
            data.prompts,
            max_new_tokens=max_new_tokens,
            temperature=temp,
            seed=0,
            batch_size=64,
        )
        out[name] = sum(exact_match(task, t, r) for t, r in zip(texts, data.references, strict=True)) / len(
            texts
        )
    return out


def run(method: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    cfg = TrainConfig(
        task="arithmetic",
        model=MODEL,
        difficulty=args.difficulty,
        seed=seed,
        output=str(out / "runs" / f"{method}-seed{seed}"),
        overwrite=True,
        max_steps=args.steps,
        batch_size=args.prompts,
        num_generations=args.generations,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        eval_every=max(1, args.steps // 5),
        log_every=1,
        max_eval_samples=args.eval_samples,
        zero_shot=False,
        device=args.device,
        rewards=["exact", "format=0.1"],
        **METHODS[method],
    )
    result = train(cfg)
    tail = result["history"][-max(1, len(result["history"]) // 10) :]
    return {
        "method": method,
        "seed": seed,
        "test_accuracy": result["metrics"]["test"]["accuracy"],
        "final_reward": statistics.mean(h["reward"] for h in tail),
        "rollouts": result["rollouts"],
        "trainable_params": result["trainable_params"],
        "sync_bytes": result["sync_bytes_per_update"],
        "model_bytes": result["model_bytes"],
        "generation_seconds": result["generation_seconds"],
        "train_seconds": result["train_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--difficulty", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per rollout step")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench/results/grpo")
    parser.add_argument("--smoke", action="store_true", help="2 steps, 2 prompts x 2 generations, 8 problems")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.prompts, args.generations, args.eval_samples, args.max_new_tokens = 2, 2, 2, 8, 16
        args.seeds = "0"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = base_accuracy(
        args.difficulty, args.eval_samples, args.temperature, args.max_new_tokens, args.device
    )
    runs = [run(m, int(s), args, out) for s in args.seeds.split(",") for m in METHODS]
    (out / "grpo.json").write_text(json.dumps({"args": vars(args), "base": base, "runs": runs}, indent=1))
    lines = [
        f"# GRPO on arithmetic difficulty {args.difficulty} ({MODEL})",
        "",
        f"Base model on {args.eval_samples} test problems: greedy {base['greedy']:.3f}, sampled (T="
        f"{args.temperature}) {base['sampled']:.3f}.",
        "",
        "| method | seed | test accuracy | reward (last 10%) | rollouts | trainable | bytes/update | model bytes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['method']} | {r['seed']} | {r['test_accuracy']:.3f} | {r['final_reward']:.3f} | {r['rollouts']} | "
        f"{r['trainable_params']:,} | {r['sync_bytes']:,} | {r['model_bytes']:,} |"
        for r in runs
    ]
    (out / "grpo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
