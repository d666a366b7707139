"""One rank of the FSDP2 test (run by torchrun from test_fsdp.py): a tiny Llama classifier with SpaRTA in functional
mode, `fully_shard` per decoder layer and at the root, a few Adam steps on this rank's half of each global batch.

Writes into OUT (argv[1]): result.json (rank 0: per-step global losses, probe logits, sharding facts),
adapter-rank{r}/ (save_pretrained on every rank: it all-gathers the sharded deltas and head) and frozen.safetensors
(rank 0: every adapted weight, all-gathered after training).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tinyconfigs under torchrun

from transformers import LlamaForSequenceClassification  # noqa: E402

from sparta import SpartaConfig, get_sparta_model  # noqa: E402
from tinyconfigs import tiny_llama_config  # noqa: E402

CONFIG = dict(density=0.2, target_modules="all-linear", seed=0)
STEPS, GLOBAL_BATCH, LR = 6, 8, 1e-2


def tiny_classifier() -> LlamaForSequenceClassification:
    """conftest's tiny classifier (seed 0), built here: a helper run by torchrun imports no conftest."""
    torch.manual_seed(0)
    return LlamaForSequenceClassification(tiny_llama_config()).eval()


def batches() -> list[dict[str, torch.Tensor]]:
    """The global batches of every step (no padding: the classifier reads the last token)."""
    g = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(1, 128, (GLOBAL_BATCH, 10), generator=g),
            "labels": torch.randint(0, 3, (GLOBAL_BATCH,), generator=g),
        }
        for _ in range(STEPS)
    ]


def probe() -> torch.Tensor:
    return torch.randint(1, 128, (4, 9), generator=torch.Generator().manual_seed(7))


def main(out: Path) -> None:
    from safetensors.torch import save_file
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = get_sparta_model(tiny_classifier(), SpartaConfig(**CONFIG, merge_mode="functional"))
    for layer in model.base_model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    per_rank = GLOBAL_BATCH // world
    losses = []
    for batch in batches():
        part = {k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in batch.items()}
        loss = model(**part).loss  # the mean over this rank's half; FSDP averages the gradients over ranks
        loss.backward()
        opt.step()
        opt.zero_grad()
        total = loss.detach().double()
        dist.all_reduce(total)
        losses.append(total.item() / world)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=probe()).logits
    model.save_pretrained(out / f"adapter-rank{rank}")  # a collective: every rank gathers
    frozen = {f"{n}.weight": layer.weight.full_tensor() for n, layer in model.sparta_layers()}
    q = model.base_model.model.layers[0].self_attn.q_proj
    if rank == 0:
        save_file({k: v.contiguous() for k, v in frozen.items()}, str(out / "frozen.safetensors"))
        result = {
            "losses": losses,
            "logits": logits.tolist(),
            "weight_is_dtensor": isinstance(q.weight, DTensor),
            "delta_is_dtensor": isinstance(q.sparta_delta, DTensor),
            "weight_local_rows": q.weight.to_local().shape[0],
            "weight_rows": q.weight.shape[0],
            "merge_modes": sorted({layer.merge_mode for _, layer in model.sparta_layers()}),
        }
        (out / "result.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
