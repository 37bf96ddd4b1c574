"""Score one window of the tiny quickstart model under DistributedDataParallel, sum the
accumulators across ranks, and save what this rank would rank on. Called by the ranks
tests/test_importance_distributed.py starts (with the variables torchrun sets), or run under
torchrun: ``torchrun --nproc_per_node=N tests/_ddp_scores.py OUT_DIR PER_RANK_BATCH WINDOW``.

Writes ``OUT_DIR/rank{r}.pt`` = {"scores": {group root: 1-D tensor}, "world_size": N}; joins the
process group if one is set up already, and ends it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from taylorprune import distributed
from taylorprune.data import build_data
from taylorprune.graph import ChannelGraph
from taylorprune.importance import ImportanceAccumulator
from taylorprune.models import build_model


def main(out_dir: str, batch_size: int, window: int) -> None:
    torch.set_num_threads(1)
    device = distributed.setup("cpu")
    try:
        torch.manual_seed(0)
        data = build_data(
            "digits", batch_size=batch_size, seed=0, train_subset=256, augment=False,
            distributed=True,
        )  # fmt: skip
        model = build_model(
            {"source": "builtin", "name": "resnet20", "num_classes": 10, "in_chans": 1,
             "kwargs": {"width": 0.5}}
        )  # fmt: skip
        model.eval()  # eval-mode BN: a global batch is then the same whichever rank holds it
        groups = ChannelGraph(model, torch.zeros(1, 1, 8, 8)).groups()
        acc = ImportanceAccumulator(model, groups, "taylor_fo_bn")
        ddp = distributed.wrap(model, device)
        for i, (x, y) in enumerate(data.train):
            if i == window:
                break
            model.zero_grad(set_to_none=True)
            F.cross_entropy(ddp(x), y).backward()  # DDP averages the gradients across ranks
            acc.update()
        acc.all_reduce()
        torch.save(
            {"scores": acc.group_scores(), "world_size": distributed.world_size()},
            Path(out_dir) / f"rank{distributed.rank()}.pt",
        )
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
