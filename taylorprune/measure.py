"""MACs and parameter counts with fvcore, per model and per layer; latency and peak memory.

Counting convention (also written into every report as :data:`CONVENTION`): fvcore counts one
fused multiply-add as one "flop", so its numbers are MACs and we call them MACs. Models are counted
in eval mode, because batch norm is counted differently in train mode. torchvision's documented
"GFLOPS" use the same convention but leave batch norm out; ``include_batchnorm=False`` reproduces
them.

The module holds what a report measures of a model: counts (fvcore), peak activation memory and
latency (timed by :mod:`taylorprune.latency.timing`, the timing every latency goes through).
"""

from __future__ import annotations

import statistics
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from taylorprune._clean_copy import clean_copy
from taylorprune.errors import UserError
from taylorprune.latency.timing import (
    TimingSettings,
    check_runs,
    interleaved_times,
    module_to_settings,
    resolve_device,
    side_by_side,
    summary,
    to_settings,
)

CONVENTION = (
    "MACs counted by fvcore 0.1.5 (one fused multiply-add = one MAC) in eval mode on a batch of "
    "one input of shape input_shape; convolutions, linear layers, matrix products, normalisation "
    "layers (batch norm in eval mode: two per element, a scale and a shift), adaptive average "
    "pooling and upsampling are counted; element-wise additions and means, activations and max "
    "pooling count zero. Params: every parameter of the model (buffers excluded)."
)

Inputs = torch.Tensor | Sequence[torch.Tensor]


def _as_tuple(example_inputs: Inputs) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def _zero_macs(inputs: Any, outputs: Any) -> int:
    return 0


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def module_macs(
    model: nn.Module, example_inputs: Inputs, *, include_batchnorm: bool = True
) -> tuple[int, dict[str, int]]:
    """fvcore's total MACs and its count per module name (including the module's submodules).

    Counted in eval mode without autograd; the model's mode is restored. This is the one place
    fvcore is called.
    """
    inputs = _as_tuple(example_inputs)
    key = _architecture_key(model, inputs, include_batchnorm)
    if key in _COUNTS:
        _COUNTS.move_to_end(key)
        total, by_module = _COUNTS[key]
        return total, dict(by_module)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    with _eval_mode(model), torch.no_grad():
        analysis = FlopCountAnalysis(model, inputs)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        if not include_batchnorm:
            # A handle returning 0 is the only way to drop an op in fvcore 0.1.5: passing None to
            # set_op_handle leaves the default handle in place.
            analysis.set_op_handle("aten::batch_norm", _zero_macs)
        total = int(analysis.total())
        by_module = {name: int(v) for name, v in analysis.by_module().items()}
    _COUNTS[key] = (total, by_module)
    while len(_COUNTS) > _COUNTS_KEPT:
        _COUNTS.popitem(last=False)
    return total, dict(by_module)


# fvcore traces the whole model for every count (about 0.4 s for a ResNet-101), and a run counts
# the same architecture several times (its record, the cost model, the latency comparison, the
# per-layer table). A count depends on the architecture and the input shapes, not on the weights,
# so the last few counts are kept under a key of exactly those.
_COUNTS: OrderedDict[tuple, tuple[int, dict[str, int]]] = OrderedDict()
_COUNTS_KEPT = 16


def _architecture_key(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], include_batchnorm: bool
) -> tuple:
    """Every module's name, class, settings (``extra_repr``: strides, groups, padding, ...) and
    tensor shapes, with the inputs' shapes and dtypes: what fixes fvcore's count of ``model``."""
    modules = tuple(
        (
            name,
            type(m),
            m.extra_repr(),
            tuple((n, tuple(t.shape)) for n, t in m.named_parameters(recurse=False)),
            tuple((n, tuple(t.shape)) for n, t in m.named_buffers(recurse=False)),
        )
        for name, m in model.named_modules()
    )
    shapes = tuple((tuple(t.shape), t.dtype) for t in inputs)
    return (modules, shapes, include_batchnorm)


def count(
    model: nn.Module, example_inputs: Inputs, *, include_batchnorm: bool = True
) -> tuple[int, int]:
    """(MACs, params) of ``model`` on ``example_inputs``, counted by fvcore in eval mode.

    MACs are for the whole batch given (the project convention is a batch of one). fvcore counts
    one fused multiply-add as one "flop", i.e. these are MACs. ``include_batchnorm=False`` leaves
    batch norm out, as torchvision's documented figures do. The model's train/eval mode is restored.
    """
    macs, _ = module_macs(model, example_inputs, include_batchnorm=include_batchnorm)
    params = sum(p.numel() for p in model.parameters())
    return macs, int(params)


# -- per layer -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCount:
    """One module's own share of the counts.

    ``macs`` are the MACs fvcore attributes to the module minus those of its submodules,
    ``params`` the parameters it holds directly; so the rows of :func:`per_layer` add up to the
    model's totals. ``in_channels``/``out_channels`` are channels (conv, norm) or features
    (linear); ``None`` for other modules. ``kind`` is ``"conv"``, ``"linear"``, ``"norm"`` or
    ``"other"``.
    """

    name: str
    type: str
    kind: str
    in_channels: int | None
    out_channels: int | None
    macs: int
    params: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Layer type -> (kind, (in, out) channels). Checked in order; the first isinstance match wins.
_CHANNELS: tuple[tuple[type[nn.Module], str, Callable[[Any], tuple[int, int]]], ...] = (
    (nn.modules.conv._ConvNd, "conv", lambda m: (m.in_channels, m.out_channels)),
    (nn.Linear, "linear", lambda m: (m.in_features, m.out_features)),
    (nn.modules.batchnorm._NormBase, "norm", lambda m: (m.num_features, m.num_features)),
    (nn.GroupNorm, "norm", lambda m: (m.num_channels, m.num_channels)),
)


def _describe(module: nn.Module) -> tuple[str, int | None, int | None]:
    for typ, kind, channels in _CHANNELS:
        if isinstance(module, typ):
            cin, cout = channels(module)
            return kind, int(cin), int(cout)
    return "other", None, None


def per_layer(
    model: nn.Module, example_inputs: Inputs, *, include_batchnorm: bool = True
) -> dict[str, LayerCount]:
    """Per-module MACs, params and channels, from fvcore's per-module counts, in module order.

    Keys are qualified module names (``""`` is the model itself, holding MACs of functional calls in
    its own ``forward``). Only modules with MACs or parameters of their own are listed; the listed
    ``macs`` sum to :func:`count`'s MACs and the ``params`` to its params (tied parameters aside).
    """
    _, by_module = module_macs(model, example_inputs, include_batchnorm=include_batchnorm)
    out: dict[str, LayerCount] = {}
    for name, module in model.named_modules():
        inclusive = by_module.get(name, 0)
        children = sum(by_module.get(_join(name, c), 0) for c, _ in module.named_children())
        own_macs = inclusive - children
        own_params = sum(p.numel() for p in module.parameters(recurse=False))
        if own_macs == 0 and own_params == 0:
            continue
        kind, cin, cout = _describe(module)
        out[name] = LayerCount(
            name, type(module).__name__, kind, cin, cout, int(own_macs), int(own_params)
        )
    return out


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def layer_table(
    before: dict[str, LayerCount], after: dict[str, LayerCount]
) -> list[dict[str, Any]]:
    """The ``layers`` entries of a report: prunable (conv and linear) layers, before vs after.

    Rows follow ``before``'s order. ``macs_share_before``/``_after`` are fractions of the sum over
    all rows of ``before``/``after`` (i.e. of the model's total MACs when both come from
    :func:`per_layer`). A layer absent from ``after`` is reported with zero channels, MACs and
    params.
    """
    total_before = sum(c.macs for c in before.values()) or 1
    total_after = sum(c.macs for c in after.values()) or 1
    gone = LayerCount("", "", "", 0, 0, 0, 0)
    rows = []
    for name, b in before.items():
        if b.kind not in ("conv", "linear"):
            continue
        a = after.get(name, gone)
        rows.append(
            {
                "name": name,
                "type": b.type,
                "in_channels_before": b.in_channels,
                "in_channels_after": a.in_channels,
                "channels_before": b.out_channels,
                "channels_after": a.out_channels,
                "macs_before": b.macs,
                "macs_after": a.macs,
                "params_before": b.params,
                "params_after": a.params,
                "macs_share_before": b.macs / total_before,
                "macs_share_after": a.macs / total_after,
            }
        )
    return rows


# -- peak memory -----------------------------------------------------------------------------------


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created by ops while active, and their peak.

    Storages are held by weak reference; one freed since the last op is subtracted before the next
    op's outputs are added, so ``peak`` is the largest sum of live outputs at any op boundary.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self.live:
                    self.live[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def peak_activation_bytes(model: nn.Module, example_inputs: Inputs) -> int:
    """Peak bytes of tensors alive during one inference-mode forward pass of ``model``.

    Counts every tensor the forward creates (activations and outputs) while it is alive; parameters,
    buffers and the inputs are excluded, and so are workspaces private to an op (e.g. a convolution
    backend's scratch buffers). Deterministic and the same on every device; runs one forward pass.
    """
    inputs = _as_tuple(example_inputs)
    tracker = _LiveTensorBytes()
    with _eval_mode(model), torch.inference_mode(), tracker:
        model(*inputs)
    return tracker.peak


# -- latency ---------------------------------------------------------------------------------------


def _settings(
    inputs: tuple[torch.Tensor, ...],
    device: str,
    threads: int | None,
    channels_last: bool,
    dtype: str,
) -> tuple[TimingSettings, torch.device]:
    """The timing settings of a call (the batch is the inputs' own) and the device they name."""
    settings = TimingSettings(
        device=device,
        batch_size=int(inputs[0].shape[0]),
        threads=threads or torch.get_num_threads(),
        dtype=dtype,
        channels_last=channels_last,
    )
    try:
        return settings, resolve_device(device)
    except UserError as exc:
        raise ValueError(str(exc)) from None


def _described(settings: TimingSettings, dev: torch.device, runs: int, warmup: int) -> dict:
    return {
        "device": str(dev),
        "batch_size": settings.batch_size,
        "threads": settings.threads,
        "dtype": settings.dtype,
        "channels_last": settings.channels_last,
        "runs": runs,
        "warmup": warmup,
    }


def _peak_memory(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], settings: TimingSettings, dev: torch.device
) -> dict[str, float]:
    """Peak activation memory of one pass (and the CUDA allocator's peak on a GPU), on a copy of
    ``model`` in the timing's device, dtype and memory format."""
    mib = 2.0**20
    net = module_to_settings(clean_copy(model), settings, dev)
    xs = tuple(to_settings(x, settings, dev) for x in inputs)
    out = {"peak_activation_mib": peak_activation_bytes(net, xs) / mib}
    if dev.type == "cuda":
        # The allocator's peak above what was allocated before the pass: activations + workspaces.
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        with torch.inference_mode():
            net(*xs)
        torch.cuda.synchronize(dev)
        out["peak_cuda_mib"] = (torch.cuda.max_memory_allocated(dev) - base) / mib
    return out


def latency(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
    channels_last: bool = False,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict[str, Any]:
    """Inference latency of ``model`` on ``example_inputs`` (the batch as given), timed by
    :mod:`taylorprune.latency.timing` (``warmup`` untimed passes, then ``runs`` timed ones, in eval
    mode under ``torch.inference_mode``, with ``threads`` intra-op CPU threads, on CUDA with
    events after a synchronisation). The caller's model and thread setting are left as they were.

    Returns the settings (``device``, ``batch_size``, ``threads``, ``dtype``, ``channels_last``,
    ``runs``, ``warmup``), ``median_ms``/``p10_ms``/``p90_ms``/``mean_ms``/``min_ms``
    (milliseconds per batch) and ``peak_activation_mib`` (see :func:`peak_activation_bytes`),
    plus ``peak_cuda_mib`` on CUDA. Raises ``ValueError`` for bad ``runs``/``warmup`` or a device
    that does not exist here.
    """
    check_runs(runs, warmup)
    inputs = _as_tuple(example_inputs)
    settings, dev = _settings(inputs, device, threads, channels_last, dtype)
    times = interleaved_times([model], None, settings, runs=runs, warmup=warmup, inputs=inputs)[0]
    stats = summary(times)
    del stats["runs"]
    return {
        **_described(settings, dev, runs, warmup),
        **stats,
        # On a shared machine the fastest run is the least disturbed one.
        "mean_ms": statistics.fmean(times),
        "min_ms": min(times),
        **_peak_memory(model, inputs, settings, dev),
    }


def compare_latency(
    baseline: nn.Module,
    pruned: nn.Module,
    example_inputs: Inputs,
    *,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
    channels_last: bool = False,
    device: str = "cpu",
    dtype: str = "float32",
    copies: int = 1,
) -> dict[str, Any]:
    """Latency of ``pruned`` against ``baseline``, timed side by side
    (:func:`taylorprune.latency.timing.side_by_side`; ``runs`` rounds spread over ``copies`` fresh
    copies of the two models).

    Returns the settings (as :func:`latency`, plus ``copies``), each model's median with its 10th
    and 90th percentiles (``baseline_ms``, ``baseline_p10_ms``, ..., ``pruned_p90_ms``), the median
    per-round latency ratio ``fraction`` and speed-up ``speedup``, each with its 10th and 90th
    percentiles (``fraction_p10``, ..., ``speedup_p90``), ``ideal_speedup`` (the ratio of the
    models' MACs, :func:`count` on the first example of the batch: the speed-up if time followed
    MACs) and each model's peak memory (``baseline_peak_activation_mib``, ...).
    """
    check_runs(runs, warmup)
    inputs = _as_tuple(example_inputs)
    settings, dev = _settings(inputs, device, threads, channels_last, dtype)
    reading = side_by_side(
        baseline, pruned, None, settings, runs=runs, warmup=warmup, copies=copies, inputs=inputs
    )
    reading.pop("ratios")
    one = tuple(x[:1] for x in inputs)
    macs_base, _ = count(baseline, one)
    macs_pruned, _ = count(pruned, one)
    memory = {
        f"{key}_{k}": v
        for key, net in (("baseline", baseline), ("pruned", pruned))
        for k, v in _peak_memory(net, inputs, settings, dev).items()
    }
    return {
        **_described(settings, dev, runs, warmup),
        **reading,
        "ideal_speedup": macs_base / macs_pruned if macs_pruned else float("inf"),
        **memory,
    }
