"""Do two sets of run folders hold the same results? For checking that a change of the code keeps
behaviour: run the same recipes and seeds before and after, then compare.

Each ``BEFORE/NAME/`` is compared with ``AFTER/NAME/``: every field of ``report.json`` except what
depends on the clock or the machine's load (``created``, ``timings``, ``time_s``, latencies, the
version), and the saved model's per-module widths and weights (bit for bit). Exit code 0 when all
are identical, 1 otherwise.

    python tools/compare_runs.py /tmp/before /tmp/after
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _cli as cli

SKIP = {"created", "timings", "latency", "latency_cuda", "taylorprune_version", "time_s"}


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where ``a`` and ``b`` (JSON data) differ, as ``path: a != b`` lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in SKIP:
                continue
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'after' if k in b else 'before'}")
            else:
                out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = [f"{path}: length {len(a)} != {len(b)}"] if len(a) != len(b) else []
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            out += differences(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def model_differences(a: Path, b: Path) -> list[str]:
    """What differs between two saved pruned models: the architecture, each module's saved
    attributes (its widths) and every tensor, bit for bit."""
    x, y = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    what = {"arch": "architecture differs", "modules": "module widths differ"}
    out = [f"model.pt: {text}" for key, text in what.items() if x[key] != y[key]]
    sa, sb = x["state_dict"], y["state_dict"]
    if sa.keys() != sb.keys():
        return [*out, "model.pt: different tensors"]
    return out + [f"model.pt: {k} differs" for k in sa if not torch.equal(sa[k], sb[k])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    args = p.parse_args(argv)
    bad = 0
    for report in sorted(args.before.glob("*/report.json")):
        name = report.parent.name
        other = args.after / name
        if not (other / "report.json").is_file():
            print(f"{name}: missing in {args.after}")
            bad += 1
            continue
        found = differences(
            json.loads(report.read_text()), json.loads((other / "report.json").read_text())
        )
        found += model_differences(report.parent / "model.pt", other / "model.pt")
        print(f"{name}: {'identical' if not found else f'{len(found)} differences'}")
        for line in found[:20]:
            print("   ", line)
        bad += bool(found)
    return 1 if bad else 0


if __name__ == "__main__":
    cli.run(main)
