"""`make demo`: SpaRTA on SmolLM2-135M-Instruct and an SST-2 sample, offline on a CPU, in a few minutes.

Prints the dev accuracy before (the zero-shot head built from the "No"/"Yes" rows of the LM head) and after
training, the trainable parameters and the adapter's size. The full CLI is `sparta train --help`.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from sparta.console import configure_logging
from sparta.errors import SpartaError
from sparta.train import train
from sparta.train.config import TrainConfig
from sparta.train.rates import format_lr

# The budget of PEFT LoRA r=8 on q_proj and v_proj of SmolLM2-135M (460,800 parameters) spread over its Wv and Wo
# matrices (13,271,040 parameters): the paper's "SpaRTA at the LoRA budget" with its preferred Wv/Wo targets.
LORA_BUDGET_DENSITY_WV_WO = 460_800 / 13_271_040


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparta.demo", description=__doc__)
    parser.add_argument(
        "--train-samples", type=int, default=640, help="SST-2 training examples (default 640)"
    )
    parser.add_argument(
        "--eval-samples", type=int, default=300, help="dev/test examples evaluated (default 300)"
    )
    parser.add_argument(
        "--data-dir", default=None, help="data directory (default: $SPARTA_DATA_DIR, ../shared/data)"
    )
    parser.add_argument("--output", default="runs/demo", help="output directory (default runs/demo)")
    args = parser.parse_args(argv)

    configure_logging()  # the run's progress lines, as `sparta train` prints them

    cfg = TrainConfig(
        task="sst2",
        method="sparta",
        model="smollm2-135m-instruct",
        targets=["v_proj", "o_proj"],
        density=LORA_BUDGET_DENSITY_WV_WO,
        max_train_samples=args.train_samples,
        max_eval_samples=args.eval_samples,
        epochs=1,
        batch_size=16,
        warmup_ratio=0.1,  # lr: not given, so the default of `sparta train` (3e-3 at this density)
        data_dir=args.data_dir,
        output=args.output,
        overwrite=True,
        save_index_format="seed",
        save_delta_dtype="bfloat16",
    )
    print("the same run: sparta train " + shlex.join(cfg.to_argv()))
    try:
        results = train(cfg)
    except SpartaError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2

    zero = (results.get("zero_shot") or {}).get("dev", {})
    dev = results["metrics"].get("dev", {})
    test = results["metrics"].get("test", {})
    trainable, total = results["trainable_params"], results["total_params"]
    print()
    print("SpaRTA demo: SmolLM2-135M-Instruct, SST-2, Wv+Wo at the LoRA r=8 parameter budget")
    print(
        f"  training examples    {results['data']['train']} (1 epoch, {results['steps']} steps, "
        f"lr {format_lr(results['config']['lr'])})"
    )
    print(f"  trainable parameters {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
    if zero:
        print(f"  dev accuracy before  {zero['accuracy']:.3f}  (zero-shot head from the 'No'/'Yes' LM rows)")
    print(f"  dev accuracy after   {dev.get('accuracy', float('nan')):.3f}")
    print(
        f"  test accuracy after  {test.get('accuracy', float('nan')):.3f}  ({results['data']['test']} examples)"
    )
    size = results["adapter_bytes"]
    print(
        f"  adapter size         {size / 1e6:.2f} MB ({size / trainable:.2f} bytes per trainable parameter)"
    )
    print(
        f"  training time        {results['train_seconds']:.0f} s ({results['train_examples_per_s']:.1f} examples/s)"
    )
    print(f"  peak memory          {results['peak_memory_mb']:.0f} MB")
    print(f"  output               {args.output}/ (results.json, adapter/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
