"""torch-pruning's model zoo, pruned by taylorprune to 0.6 of the MACs, saved and reloaded.

The list (:data:`ZOO`, 39 models): the torchvision classifiers that torch-pruning's own examples
and tests prune (``examples/torchvision_models/torchvision_pruning.py``,
``tests/test_torchvision_models.py``, the list in ``benchmarks/prunability/readme.md``), one or
two of each family, with the three it lists as failures (Swin, ShuffleNetV2; RAFT is not a
classifier), plus timm ResNets. Each model: random init, 10 classes, one-shot pruning as
``taylorprune.prune`` does it (``taylor_fo_bn`` scores of one minibatch of two random images,
then removal to the target), 0.6 of the baseline MACs (fvcore, batch 1); then ``save_pruned``,
``load_pruned`` and the two models' outputs compared with ``torch.equal``.

A model passes when it keeps 0.6 ± 0.01 of its MACs, or stops short with the reason named, and
its 10 outputs (the classifier is found and protected, a conv behind pooling included); groups
left whole (attention widths, channel shuffles, what torch-pruning cannot analyse) are listed.
Each model's result is written to ``<out>/models/<source>_<name>.json`` as soon as it is done (a
rerun skips those on disk unless ``--force``), then ``zoo.json`` and the table ``zoo.md``.

    nice -n 10 .venv/bin/python tools/zoo_check.py          # results in tools/results/zoo/
    .venv/bin/python tools/zoo_check.py --models torchvision:vit_b_32 --size 64 --out /tmp/zoo
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common
import _cli as cli

from taylorprune import StructuredPruner, Target, UserError, count, load_pruned, save_pruned
from taylorprune.models import build_model
from taylorprune.pruning.schedule import Schedule, Scoring, run_schedule

KEEP = 0.6
BAND = 0.01

#: (source, name, input size, builder kwargs).
ZOO: tuple[tuple[str, str, int, dict[str, Any]], ...] = (
    *(
        ("torchvision", name, 224, {})
        for name in (
            "alexnet",
            "vgg11",
            "vgg16_bn",
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet101",
            "resnet152",
            "resnext50_32x4d",
            "wide_resnet50_2",
            "densenet121",
            "mobilenet_v2",
            "mobilenet_v3_small",
            "mobilenet_v3_large",
            "mnasnet0_5",
            "mnasnet1_0",
            "efficientnet_b0",
            "efficientnet_v2_s",
            "regnet_x_400mf",
            "regnet_y_400mf",
            "squeezenet1_0",
            "squeezenet1_1",
            "convnext_tiny",
            "vit_b_16",
            "vit_b_32",
            "swin_t",
            "shufflenet_v2_x1_0",
        )
    ),
    # without the auxiliary heads, whose train-mode outputs are not logits (as torch-pruning does)
    ("torchvision", "googlenet", 224, {"aux_logits": False, "init_weights": True}),
    ("torchvision", "inception_v3", 299, {"aux_logits": False, "init_weights": True}),
    *(
        ("timm", name, 224, {})
        for name in (
            "resnet18",
            "resnet18d",
            "resnet26",
            "resnet26d",
            "resnet26t",
            "resnet34",
            "resnet50",
            "resnet50d",
            "seresnet50",
            "resnext50_32x4d",
        )
    ),
)

log = logging.getLogger("taylorprune.zoo")


def check(source: str, name: str, size: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Prune one model of the zoo to :data:`KEEP` of its MACs, save and reload it; its result."""
    torch.manual_seed(0)
    if source == "torchvision" and name.startswith("vit_"):
        kwargs = {**kwargs, "image_size": size}
    t0 = time.perf_counter()
    model = build_model({"source": source, "name": name, "num_classes": 10, "kwargs": kwargs})
    x = torch.randn(2, 3, size, size)
    y = torch.randint(0, 10, (2,))
    macs0, params0 = count(model, x[:1])
    out: dict[str, Any] = {
        "model": f"{source}:{name}",
        "input": [3, size, size],
        "baseline_macs": macs0,
        "baseline_params": params0,
    }
    try:
        pruner = StructuredPruner(model, x)
        out["left_whole"] = [
            {"layers": list(lw.layers), "reason": lw.reason} for lw in pruner.left_whole
        ]
        result = run_schedule(
            pruner, [(x, y)], F.cross_entropy, Target("macs", KEEP), Schedule("oneshot"), Scoring()
        )
    except UserError as exc:
        return {**out, "error": str(exc), "seconds": time.perf_counter() - t0}
    macs, params = count(model, x[:1])
    kept = macs / macs0
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        reloaded = load_pruned(save_pruned(model, Path(tmp) / "m.pt"))
        with torch.no_grad():
            logits = model(x)
            exact = torch.equal(reloaded(x), logits)
    return {
        **out,
        "macs": macs,
        "params": params,
        "macs_kept": kept,
        "reached": abs(kept - KEEP) <= BAND,
        "stopped_short": None if result.reached else result.stopped_short,
        "reload_exact": exact,
        "classes_kept": tuple(logits.shape) == (2, 10),
        "seconds": time.perf_counter() - t0,
    }


def passed(r: dict[str, Any]) -> bool:
    """Reached the band, or stopped short with a reason; every class kept; reloaded exactly."""
    named = r.get("stopped_short") is not None
    ok = "error" not in r and (r["reached"] or named) and r["reload_exact"]
    return ok and r["classes_kept"]


def table(results: list[dict[str, Any]]) -> str:
    """The markdown report: one row per model, the reasons groups were left whole below."""
    reasons: dict[str, str] = {}
    rows = [
        "| model | input | MACs kept | reached 0.6 ± 0.01? | left whole | 10 classes kept "
        "| reload exact | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        left = r.get("left_whole") or []
        notes = []
        for reason in dict.fromkeys(lw["reason"] for lw in left):
            key = reasons.setdefault(reason, chr(ord("a") + len(reasons)))
            count_ = sum(lw["reason"] == reason for lw in left)
            first = left[[lw["reason"] for lw in left].index(reason)]["layers"][0]
            notes.append(f"{count_} [{key}] (`{first}`{', …' if count_ > 1 else ''})")
        shape = "×".join(str(v) for v in r["input"][1:])
        if "error" in r:
            rows.append(
                f"| {r['model']} | {shape} | — | error: {r['error']} | {'; '.join(notes) or '—'} "
                f"| — | — | {r['seconds'] or 0:.0f} |"
            )
            continue
        reached = "yes" if r["reached"] else f"no: {r['stopped_short']['message']}"
        rows.append(
            f"| {r['model']} | {shape} | {r['macs_kept']:.3f} | {reached} | "
            f"{'; '.join(notes) or '—'} | {'yes' if r['classes_kept'] else 'NO'} "
            f"| {'yes' if r['reload_exact'] else 'NO'} "
            f"| {r['seconds']:.0f} |"
        )
    ok = sum(passed(r) for r in results)
    hit = sum(bool(r.get("reached")) for r in results)
    lines = [
        "# taylorprune over torch-pruning's model zoo",
        "",
        f"{len(results)} models, random init, one-shot `taylor_fo_bn` to {KEEP} of the fvcore MACs "
        f"(batch 1): {hit} within ± {BAND}, {ok} pass (reached, or stopped short with the reason "
        "named, the 10 classes kept, and reloaded exactly). Seconds: wall time of the whole check "
        "of one model (build, counts, scoring, pruning, save and reload) on one thread of a "
        "shared 2-core CPU. Written by `tools/zoo_check.py`.",
        "",
        *rows,
        "",
        "Groups left whole, by reason:",
        "",
        *(f"- [{key}] {reason}" for reason, key in reasons.items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_out(ap, "zoo")
    ap.add_argument("--models", nargs="*", help="source:name of the models to run (default: all)")
    ap.add_argument("--size", type=int, help="input size for every model (default: the list's)")
    cli.add_threads(ap, 1)
    ap.add_argument("--force", action="store_true", help="rerun models already on disk")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    chosen = [z for z in ZOO if not args.models or f"{z[0]}:{z[1]}" in args.models]
    unknown = set(args.models or ()) - {f"{z[0]}:{z[1]}" for z in ZOO}
    if unknown:
        sys.exit(f"zoo_check: unknown model(s) {', '.join(sorted(unknown))}")
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    results = []
    for source, name, size, kwargs in chosen:
        path = args.out / "models" / f"{source}_{name}.json"
        if path.exists() and not args.force:
            results.append(json.loads(path.read_text()))
            continue
        log.info("%s:%s ...", source, name)
        try:
            r = check(source, name, args.size or size, kwargs)
        except Exception as exc:  # a bug, recorded with the model so that the others still run
            log.exception("%s:%s failed", source, name)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            r = {
                "model": f"{source}:{name}",
                "input": [3, args.size or size, args.size or size],
                "error": f"{type(exc).__name__}: {first}",
                "seconds": None,
            }
        log.info(
            "%s:%s: %s", source, name, json.dumps({k: r.get(k) for k in ("macs_kept", "seconds")})
        )
        common.write_json(path, r)
        results.append(r)
    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
    }
    summary = {"keep": KEEP, "band": BAND, "machine": machine, "models": results}
    common.write_json(args.out / "zoo.json", summary)
    common.write_file(args.out / "zoo.md", table(results))
    print(table(results))


if __name__ == "__main__":
    cli.run(main)
