"""``taylorprune latency-table MODEL``: measure (or load from the cache) and show a latency table.

Per table layer: its signature, grid size and latency at full width; their sum against a real
end-to-end measurement of the model (the difference is what the table leaves to the residual:
activations, additions, pooling). ``--check`` also measures uniformly thinned variants side by side
with the model and compares them with the prediction.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from taylorprune.commands import add_model_arguments
from taylorprune.commands import positive_int as _positive_int
from taylorprune.commands.measure import DEFAULT_INPUT_SIZE


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "latency-table",
        help="measure a model's per-layer latency table on this device",
        description=(
            "Measure the latency of every convolution/Linear layer of a model (with its "
            "BatchNorm) on a grid of input and output widths, on this device, cached under "
            "$TAYLORPRUNE_CACHE/latency; show it and compare its sum with the whole model."
        ),
    )
    default = " ".join(map(str, DEFAULT_INPUT_SIZE))
    add_model_arguments(p, f"input shape without the batch (default {default})")
    p.add_argument("--num-classes", type=_positive_int, default=None, help="classifier outputs")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="batch size (default 16)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch")
    p.add_argument("--dtype", default="float32", help="float32 (default), float16 or bfloat16")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument(
        "--align", type=_positive_int, default=8, help="grid widths are multiples of this (8)"
    )
    p.add_argument("--runs", type=_positive_int, default=20, help="end-to-end timed runs (20)")
    p.add_argument("--rebuild", action="store_true", help="measure again, ignoring the cache")
    p.add_argument("--check", action="store_true", help="also measure thinned variants")
    p.add_argument("--output", default=None, help="also write the table (JSON) to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    from taylorprune.commands.measure import _saved_input_size
    from taylorprune.latency import LatencyModel, TimingSettings, build_table
    from taylorprune.models import build_model, parse_model_string

    spec = parse_model_string(args.model)
    if args.num_classes is not None:
        spec["num_classes"] = args.num_classes
    settings = TimingSettings(
        device=args.device,
        batch_size=args.batch_size,
        threads=args.threads,
        dtype=args.dtype,
        channels_last=args.channels_last,
    )
    model = build_model(spec).eval()
    shape = tuple(args.input_size or _saved_input_size(spec) or DEFAULT_INPUT_SIZE)
    table = build_table(
        model, shape, settings, align=args.align, rebuild=args.rebuild, progress=not args.json
    )
    if args.output:
        table.save(args.output)
    latency = LatencyModel.measure(table, model, runs=args.runs)
    result = describe(args.model, table, latency)
    if args.check:
        result["check"] = _check(model, latency)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def _check(model: Any, latency: Any) -> dict[str, Any]:
    import torch

    from taylorprune.graph import ChannelGraph
    from taylorprune.latency.fit import check_fit, width_configs
    from taylorprune.pruning import find_classifier

    x = torch.randn(1, *latency.table.input_shape)
    classifier = find_classifier(model, x)
    graph = ChannelGraph(model, x, [classifier] if classifier else [])
    configs = width_configs(graph.groups(), random=0)
    return check_fit(model, latency, configs, runs=10)


def describe(model: str, table: Any, latency: Any) -> dict[str, Any]:
    """The command's result as plain data."""
    rows = [
        {
            "name": e.name,
            "kind": e.layer.kind,
            "signature": e.layer.signature,
            "cin": e.layer.cin,
            "cout": e.layer.cout,
            "grid": [len(e.cin_axis), len(e.cout_axis)],
            "full_ms": e.full(),
        }
        for e in table.entries.values()
    ]
    return {
        "model": model,
        "input_shape": list(table.input_shape),
        "settings": table.settings.as_dict(),
        "device": table.device.as_dict(),
        "stats": table.stats,
        "layers": rows,
        "table_sum_ms": latency.table_ms,
        "measured_ms": latency.baseline_ms,
        "residual_ms": latency.residual_ms,
    }


def _signature_text(sig: dict[str, Any]) -> str:
    spatial = "x".join(map(str, sig["input"])) or "-"
    if sig["kind"] in ("conv", "depthwise"):
        kernel = "x".join(map(str, sig["kernel"]))
        stride = "x".join(map(str, sig["stride"]))
        groups = " dw" if sig["groups"] == 0 else f" g{sig['groups']}" if sig["groups"] > 1 else ""
        text = f"{kernel} s{stride}{groups} @{spatial}"
    else:
        text = f"{sig['op']} @{spatial}"
    return text + (" +BN" if sig.get("norm") else "")


def format_table(result: dict[str, Any]) -> str:
    """Human-readable text of the command's result."""
    s, d, st = result["settings"], result["device"], result["stats"]
    shape = "x".join(map(str, result["input_shape"]))
    layout = "channels_last" if s["channels_last"] else "contiguous"
    lines = [
        f"{result['model']}  input {shape}, batch {s['batch_size']}, {s['dtype']}, {layout}; "
        f"{d['type']} '{d['name']}' ({d['threads']} threads, torch {d['torch']})",
        f"table: {st['layers']} layers, {st['signatures']} signatures, {st['points']} points "
        f"({st['measured']} measured, {st['cached']} from the cache) in {st['seconds']:.1f} s",
        "",
    ]
    width = max(len(r["name"]) for r in result["layers"])
    lines.append(
        f"{'layer':<{width}}  {'signature':<26} {'in':>5} {'out':>5} {'grid':>6} {'ms':>9}"
    )
    for r in result["layers"]:
        grid = f"{r['grid'][0]}x{r['grid'][1]}"
        lines.append(
            f"{r['name']:<{width}}  {_signature_text(r['signature']):<26} {r['cin']:>5} "
            f"{r['cout']:>5} {grid:>6} {r['full_ms']:9.3f}"
        )
    total, measured = result["table_sum_ms"], result["measured_ms"]
    lines += [
        "",
        f"sum of the table's layers  {total:10.2f} ms",
        f"measured end to end        {measured:10.2f} ms (median)",
        f"not in the table           {measured - total:10.2f} ms "
        f"({100 * (measured - total) / measured:.1f}%: activations, additions, pooling, overhead)",
    ]
    check = result.get("check")
    if check:
        lines += [
            "",
            f"{'variant':<14} {'predicted':>10} {'measured':>10} {'error':>7}  (to baseline)",
        ]
        for r in check["rows"]:
            lines.append(
                f"{r['name']:<14} {r['predicted_ratio']:10.3f} {r['measured_ratio']:10.3f} "
                f"{100 * r['error']:+6.1f}%"
            )
    return "\n".join(lines)
