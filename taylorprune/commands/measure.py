"""``taylorprune measure MODEL [--input-size C H W] [--json]``: MACs, params, per-layer, latency.

Before anything runs, the command checks what it was given: sizes within bounds, a device torch
knows, a model whose layers agree with their own tensors (a corrupted saved model can say one
width and hold another), and memory for the input and activations (estimated with a forward pass
on the meta device, which allocates nothing). Each problem is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import textwrap
from typing import TYPE_CHECKING, Any

from taylorprune.commands import add_model_arguments
from taylorprune.commands import positive_int as _positive_int

if TYPE_CHECKING:
    from torch import nn

DEFAULT_INPUT_SIZE = (3, 224, 224)
MAX_INPUT_CHANNELS = 4_096
MAX_BATCH = 65_536
_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "measure",
        help="count MACs and params of a model (optionally per layer and latency)",
        description=(
            "Count MACs (fvcore, one fused multiply-add = one MAC, eval mode, batch of one) and "
            "parameters of a model: torchvision:NAME, timm:NAME, a builtin name, or a saved "
            "pruned model file."
        ),
    )
    add_model_arguments(
        p,
        (
            "input shape without the batch (default: the shape a saved pruned model was pruned "
            f"at, else {' '.join(map(str, DEFAULT_INPUT_SIZE))})"
        ),
    )
    p.add_argument("--num-classes", type=_positive_int, default=None, help="classifier outputs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--per-layer", action="store_true", help="also list every layer's counts")
    p.add_argument("--latency", action="store_true", help="also time inference")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="latency batch size")
    p.add_argument("--runs", type=_positive_int, default=30, help="timed latency runs")
    p.add_argument("--warmup", type=int, default=5, help="untimed latency runs first")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for latency")
    p.add_argument("--channels-last", action="store_true", help="time in channels_last layout")
    p.add_argument("--device", default="cpu", help="latency device: cpu or cuda[:N] (default: cpu)")


def main(args: argparse.Namespace) -> int:
    import torch

    from taylorprune import measure
    from taylorprune._consistency import check_layer_widths
    from taylorprune.errors import UserError
    from taylorprune.models import build_model, parse_model_string
    from taylorprune.recipe import MAX_CLASSES

    _check_arguments(args, MAX_CLASSES)
    spec = parse_model_string(args.model)
    if args.num_classes is not None:
        spec["num_classes"] = args.num_classes
    model = build_model(spec).eval()
    check_layer_widths(model, args.model)
    saved_shape = None if args.input_size else _saved_input_size(spec)
    shape = tuple(args.input_size or saved_shape or DEFAULT_INPUT_SIZE)
    shown = "x".join(map(str, shape))
    _check_memory(model, shape, 1, "cpu", f"input {shown}")
    if args.latency:  # checked before counting, which can take long on a large input
        _check_device_present(args.device)
        if args.warmup < 0:
            raise UserError(f"--warmup must be 0 or more, got {args.warmup}")
        what = f"--batch-size {args.batch_size} at {shown}"
        _check_memory(model, shape, args.batch_size, args.device, what)
    try:
        example = torch.randn(1, *shape)
        macs, params = measure.count(model, example)
        layers = measure.per_layer(model, example) if args.per_layer else None
    except Exception as exc:  # a forward pass that fails on this shape is the user's input
        advice = (
            "the file's layers do not fit together (corrupted or edited?)"
            if saved_shape
            else "pass --input-size C H W"
        )
        raise UserError(
            f"model {args.model!r} does not run on input {shown} "
            f"({type(exc).__name__}: {_first_line(exc)}); {advice}"
        ) from exc

    result: dict[str, Any] = {
        "model": args.model,
        "input_shape": list(shape),
        "macs": macs,
        "params": params,
        "convention": measure.CONVENTION,
    }
    if layers is not None:
        result["layers"] = [c.as_dict() for c in layers.values()]
    if args.latency:
        result["latency"] = measure.latency(
            model,
            torch.randn(args.batch_size, *shape),
            runs=args.runs,
            warmup=args.warmup,
            threads=args.threads,
            channels_last=args.channels_last,
            device=args.device,
        )

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_measurement(result))
    return 0


def _check_arguments(args: argparse.Namespace, max_classes: int) -> None:
    """Bounds and spellings the parser cannot express; one line each."""
    from taylorprune.data import MAX_SIDE
    from taylorprune.errors import UserError
    from taylorprune.recipe import MAX_THREADS

    if not _DEVICE.match(args.device):
        raise UserError(f"--device {args.device!r}: expected cpu, cuda or cuda:N")
    if args.input_size is not None:
        c, h, w = args.input_size
        if c > MAX_INPUT_CHANNELS or max(h, w) > MAX_SIDE:
            raise UserError(
                f"--input-size {c} {h} {w}: at most {MAX_INPUT_CHANNELS} channels and {MAX_SIDE} "
                "pixels per side"
            )
    for flag, value, limit in (
        ("--batch-size", args.batch_size, MAX_BATCH),
        ("--num-classes", args.num_classes, max_classes),
        ("--threads", args.threads, MAX_THREADS),
    ):
        if value is not None and value > limit:
            raise UserError(f"{flag} {value}: at most {limit:,}")


def _check_device_present(device: str) -> None:
    import torch

    from taylorprune.errors import UserError

    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise UserError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )


def _check_memory(
    model: nn.Module, shape: tuple[int, ...], batch: int, device: str, what: str
) -> None:
    """Refuse a forward pass whose input plus activations exceed the device's memory.

    The activations are measured on the meta device (shapes only, nothing allocated); a model
    that cannot run there is not estimated and left to the real pass.
    """
    import torch

    from taylorprune import measure
    from taylorprune.data import physical_memory
    from taylorprune.errors import UserError

    if device.startswith("cuda") and torch.cuda.is_available():
        available = torch.cuda.get_device_properties(torch.device(device)).total_memory
    else:
        available = physical_memory()
    if available is None:
        return
    inputs = batch * 4 * _prod(shape)
    try:
        with torch.device("meta"):
            example = torch.empty(batch, *shape)
        activations = measure.peak_activation_bytes(copy.deepcopy(model).to("meta"), example)
    except Exception:  # no estimate: the real pass reports its own failure
        activations = 0
    if inputs + activations > available:
        raise UserError(
            f"{what}: the input and activations need {(inputs + activations) / 2**30:,.1f} GiB, "
            f"more than the {available / 2**30:,.1f} GiB of {device}"
        )


def _prod(values: tuple[int, ...]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _saved_input_size(spec: dict[str, Any]) -> tuple[int, ...] | None:
    """The input shape a saved pruned model was pruned at (its ``meta.input_shape``), if any.

    Raises:
        UserError: the saved shape is beyond the bounds of ``--input-size``.
    """
    if spec.get("source") != "checkpoint":
        return None
    from taylorprune.errors import UserError
    from taylorprune.serialization import read_pruned

    try:
        shape = read_pruned(spec["checkpoint"])["meta"].get("input_shape")
    except UserError:  # a plain state_dict checkpoint: it carries no shape
        return None
    if (
        isinstance(shape, list | tuple)
        and len(shape) == 3
        and all(isinstance(d, int) and d > 0 for d in shape)
    ):
        from taylorprune.data import MAX_SIDE

        if shape[0] > MAX_INPUT_CHANNELS or max(shape[1:]) > MAX_SIDE:
            raise UserError(
                f"{spec['checkpoint']}: saved input_shape {list(shape)} is beyond {MAX_SIDE} "
                "pixels per side or 4096 channels; pass --input-size C H W"
            )
        return tuple(shape)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def format_measurement(result: dict[str, Any]) -> str:
    """Human-readable text of ``taylorprune measure``'s result."""
    from taylorprune.report import si

    shape = "x".join(map(str, result["input_shape"]))
    lines = [
        f"{result['model']}  (input {shape}, batch of one)",
        f"MACs    {si(result['macs']):>8}  ({result['macs']:,})",
        f"params  {si(result['params']):>8}  ({result['params']:,})",
    ]
    layers = result.get("layers")
    if layers:
        total = result["macs"] or 1
        width = max(len(r["name"] or "(model)") for r in layers)
        lines.append("")
        lines.append(
            f"{'layer':<{width}}  {'type':<12} {'in':>5} {'out':>5} {'MACs':>9} {'share':>6} "
            f"{'params':>9}"
        )
        for r in layers:
            cin = "" if r["in_channels"] is None else r["in_channels"]
            cout = "" if r["out_channels"] is None else r["out_channels"]
            lines.append(
                f"{r['name'] or '(model)':<{width}}  {r['type'][:12]:<12} {cin:>5} {cout:>5} "
                f"{si(r['macs']):>9} {100 * r['macs'] / total:5.1f}% {si(r['params']):>9}"
            )
    lat = result.get("latency")
    if lat:
        lines.append("")
        lines.append(
            f"latency {lat['median_ms']:.2f} ms median (p10 {lat['p10_ms']:.2f}, "
            f"p90 {lat['p90_ms']:.2f}) over {lat['runs']} runs; device {lat['device']}, "
            f"batch {lat['batch_size']}, threads {lat['threads']}, "
            f"peak activations {lat['peak_activation_mib']:.1f} MiB"
        )
    lines.append("")
    lines += textwrap.wrap(f"counting: {result['convention']}", width=100)
    return "\n".join(lines)
