"""The model sources: builtin architectures, torchvision, timm, and saved pruned models.

No source downloads in a test or when ``TAYLORPRUNE_OFFLINE=1`` is set: pretrained weights must then
be on disk already, and a missing file raises :class:`UserError` at once, naming where it was looked
for.
"""

from __future__ import annotations

import difflib
import logging
import os
import warnings
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from taylorprune._pruned_format import read_pruned, rebuild
from taylorprune._registry import unknown_name_message
from taylorprune._weights import check_state_dict, extract_state_dict, read_weights_file
from taylorprune.errors import UserError
from taylorprune.models._factory import BUILTIN, MODELS, build_model

logger = logging.getLogger("taylorprune")


def offline() -> bool:
    """True when downloads are off: ``TAYLORPRUNE_OFFLINE`` or ``HF_HUB_OFFLINE`` is 1/true."""
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes")
        for var in ("TAYLORPRUNE_OFFLINE", "HF_HUB_OFFLINE")
    )


def _call_builder(kind: str, model_name: str, builder: Any, /, **kwargs: Any) -> nn.Module:
    try:
        return builder(**kwargs)
    except TypeError as exc:
        # Unknown kwargs from a recipe surface as TypeError; report them as the user's problem.
        raise UserError(f"{kind} model {model_name!r}: bad kwargs ({exc})") from None


def _is_local_file(value: str | None) -> bool:
    return value is not None and (os.sep in value or "/" in value or os.path.isfile(value))


# ------------------------------------------------------------------------------------------ builtin
@MODELS.register("builtin")
def build_builtin(spec: dict[str, Any]) -> nn.Module:
    """A model of this package (``resnet20``, ``mlp``, ``vgg_small``, ...); random init only."""
    if spec["pretrained"]:
        raise UserError(
            f"builtin model {spec['name']!r} has no pretrained weights; use 'checkpoint: <file>'"
        )
    builder = BUILTIN.get(spec["name"])
    kwargs = dict(spec["kwargs"])
    kwargs["in_chans"] = spec["in_chans"]
    if spec["num_classes"] is not None:
        kwargs["num_classes"] = spec["num_classes"]
    return _call_builder("builtin", spec["name"], builder, **kwargs)


# -------------------------------------------------------------------------------------- torchvision
def torchvision_weights(name: str, weights: str | None) -> Any:
    """The torchvision weights enum member for model ``name``: ``weights`` (e.g.
    ``"IMAGENET1K_V2"``) or the default. Raises :class:`UserError` for an unknown model or weights
    name."""
    from torchvision import models as tvm

    _check_torchvision_name(name)
    try:
        enum = tvm.get_model_weights(name)
    except (ValueError, KeyError):
        raise UserError(f"torchvision model {name!r} has no pretrained weights") from None
    if weights is None or weights == "DEFAULT":
        return enum.DEFAULT
    members = [m.name for m in enum]
    short = weights.split(".")[-1]  # accept "ResNet50_Weights.IMAGENET1K_V2" too
    if short not in members:
        raise UserError(unknown_name_message(f"weights for torchvision {name}", weights, members))
    return enum[short]


def torchvision_weights_path(weights: Any) -> str:
    """Where torchvision keeps ``weights``: ``$TORCH_HOME/hub/checkpoints/<url basename>``."""
    return os.path.join(
        torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path)
    )


def _check_torchvision_name(name: str) -> None:
    from torchvision import models as tvm

    choices = tvm.list_models()
    if name not in choices:
        raise UserError(_nearest_message("torchvision model", name, choices))


def _ensure_torchvision_file(weights: Any) -> str:
    path = torchvision_weights_path(weights)
    if os.path.isfile(path):
        return path
    where = f"looked for {path}; download from {weights.url} and place it there"
    if offline():
        raise UserError(f"torchvision weights {weights} not found offline: {where}")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        logger.info("downloading %s to %s", weights.url, path)
        torch.hub.download_url_to_file(weights.url, path, progress=False)
    except Exception as exc:  # any network or disk failure: the user must fetch the file
        raise UserError(
            f"torchvision weights {weights} could not be downloaded ({_first_line(exc)}): {where}"
        ) from None
    return path


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _classifier(model: nn.Module, num_outputs: int) -> tuple[str, nn.Module]:
    """The last Linear (or 1×1 conv, SqueezeNet) with ``num_outputs`` outputs: the classifier."""
    found: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if (isinstance(module, nn.Linear) and module.out_features == num_outputs) or (
            isinstance(module, nn.Conv2d) and module.out_channels == num_outputs
        ):
            found = (name, module)
    if found is None:
        raise UserError(
            f"cannot find the classifier (a layer with {num_outputs} outputs) to replace"
        )
    return found


def _replace_classifier(model: nn.Module, old_classes: int, num_classes: int) -> None:
    name, head = _classifier(model, old_classes)
    if isinstance(head, nn.Linear):
        new: nn.Module = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    else:
        new = nn.Conv2d(head.in_channels, num_classes, head.kernel_size, head.stride, head.padding)
    model.set_submodule(name, new)
    logger.info(
        "replaced classifier %s: %d -> %d classes (fresh init)", name, old_classes, num_classes
    )


def _adapt_input_channels(model: nn.Module, in_chans: int) -> None:
    """Give the first 3-channel conv ``in_chans`` inputs; pretrained RGB filters are summed (1
    channel) or tiled and rescaled (timm's ``adapt_input_conv``) so that activations keep their
    scale."""
    first = next(
        (
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.in_channels == 3
        ),
        None,
    )
    if first is None:
        raise UserError("cannot find a 3-channel input conv to adapt to in_chans")
    conv_name, conv = first
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        w = conv.weight
        if in_chans == 1:
            new.weight.copy_(w.sum(dim=1, keepdim=True))
        else:
            reps = -(-in_chans // 3)
            new.weight.copy_(w.repeat(1, reps, 1, 1)[:, :in_chans] * (3 / in_chans))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    model.set_submodule(conv_name, new)


@MODELS.register("torchvision")
def build_torchvision(spec: dict[str, Any]) -> nn.Module:
    """``torchvision.models.get_model(name)``; with ``pretrained`` the weights enum member named by
    ``weights`` (default ``DEFAULT``) loaded from ``$TORCH_HOME/hub/checkpoints``, or ``weights`` as
    a local file. Without ``pretrained``, ``weights`` is ignored.

    A class count other than the weights' replaces the classifier with a fresh Linear after loading;
    ``in_chans`` other than 3 adapts the first conv.
    """
    from torchvision import models as tvm

    name = spec["name"]
    _check_torchvision_name(name)
    kwargs = dict(spec["kwargs"])
    num_classes = spec["num_classes"]
    pretrained = spec["pretrained"]
    weights_file = spec["weights"] if pretrained and _is_local_file(spec["weights"]) else None

    if weights_file is not None:
        state = extract_state_dict(read_weights_file(weights_file), weights_file)
        model = _call_builder("torchvision", name, tvm.get_model, name=name, weights=None, **kwargs)
        head_name, head = _classifier(model, _out_features(model))
        file_classes = state.get(f"{head_name}.weight")
        if file_classes is not None and file_classes.shape[0] != _out_features(model):
            model = _call_builder(
                "torchvision",
                name,
                tvm.get_model,
                name=name,
                num_classes=file_classes.shape[0],
                **kwargs,
            )
        check_state_dict(model, state, weights_file)
        model.load_state_dict(state)
        trained_classes = _out_features(model)
    elif pretrained:
        weights = torchvision_weights(name, spec["weights"])
        path = _ensure_torchvision_file(weights)
        # Read once with weights_only=True: refuses unsafe pickles and turns a truncated file into a
        # one-line error. torchvision's builder then reloads the same file itself (its own loader
        # does not pass weights_only), which keeps each builder's weight-dependent settings.
        read_weights_file(path)
        model = _call_builder(
            "torchvision", name, tvm.get_model, name=name, weights=weights, **kwargs
        )
        trained_classes = len(weights.meta["categories"])
    else:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        model = _call_builder("torchvision", name, tvm.get_model, name=name, weights=None, **kwargs)
        trained_classes = num_classes

    if num_classes is not None and trained_classes != num_classes:
        _replace_classifier(model, trained_classes, num_classes)
    if spec["in_chans"] != 3:
        _adapt_input_channels(model, spec["in_chans"])
    return model


def _out_features(model: nn.Module) -> int:
    """Output count of a freshly built torchvision classifier: its last Linear or conv."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module.out_features
        elif isinstance(module, nn.Conv2d):
            last = module.out_channels
    if last is None:
        raise UserError("model has no Linear or conv layer")
    return last


# --------------------------------------------------------------------------------------------- timm
def _import_timm() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import timm

    return timm


def _check_timm_name(timm: Any, name: str) -> None:
    base = name.split(".")[0]  # "resnet50d.ra2_in1k": architecture plus pretrained tag
    if base not in timm.list_models():
        raise UserError(_nearest_message("timm model", name, timm.list_models()))


def _timm_hub_location(timm: Any, name: str) -> tuple[str | None, str | None]:
    """(hub repo id, cached file or None) of timm's default pretrained weights for ``name``."""
    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None, None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            return repo, hit
    return repo, None


@MODELS.register("timm")
def build_timm(spec: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, pretrained=..., num_classes=..., in_chans=...)``.

    With ``pretrained``, ``weights`` names a local file loaded as pretrained weights (timm drops a
    classifier of another class count and adapts the input conv); without it they come from the
    Hugging Face cache, and offline and not cached raises :class:`UserError` naming the cache and
    repository. ``checkpoint`` is loaded strictly afterwards, as for every source.
    """
    timm = _import_timm()
    name = spec["name"]
    _check_timm_name(timm, name)
    kwargs = dict(spec["kwargs"])
    if spec["num_classes"] is not None:
        kwargs["num_classes"] = spec["num_classes"]
    kwargs["in_chans"] = spec["in_chans"]
    pretrained = spec["pretrained"]
    local = spec["weights"] if pretrained and _is_local_file(spec["weights"]) else None
    if pretrained and spec["weights"] and local is None:
        raise UserError(
            f"timm model {name!r}: weights must be a local file, got {spec['weights']!r}"
        )

    if local is not None:
        state = extract_state_dict(read_weights_file(local), local)
        # source "timm": a state_dict overlay is used only when the cfg does not point at the hub.
        overlay = {"state_dict": state, "source": "timm"}
        return _create_timm(timm, name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    if spec["pretrained"]:
        repo, cached = _timm_hub_location(timm, name)
        if cached is None and (offline() or repo is None):
            from huggingface_hub.constants import HF_HUB_CACHE

            where = f"Hugging Face repo {repo} in {HF_HUB_CACHE}" if repo else "no hub entry"
            raise UserError(
                f"timm weights for {name!r} not found offline ({where}); "
                "give a local file as 'weights: <path>'"
            )
        try:
            return _create_timm(timm, name, pretrained=True, **kwargs)
        except UserError:
            raise
        except Exception as exc:  # hub/network failures of every kind
            raise UserError(
                f"timm weights for {name!r} could not be loaded from {repo} ({_first_line(exc)}); "
                "give a local file as 'weights: <path>'"
            ) from None
    return _create_timm(timm, name, pretrained=False, **kwargs)


def _create_timm(timm: Any, name: str, **kwargs: Any) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:
        raise UserError(f"timm model {name!r}: bad kwargs ({exc})") from None
    except RuntimeError as exc:
        # Shape mismatches between a local weights file and the architecture.
        raise UserError(f"timm model {name!r}: cannot load weights ({_first_line(exc)})") from None


# --------------------------------------------------------------------------------------- checkpoint
@MODELS.register("checkpoint")
def build_from_checkpoint(spec: dict[str, Any]) -> nn.Module:
    """A saved pruned model (``"format": "taylorprune.pruned"``): its unpruned architecture built
    from the spec stored in the file, then given the saved widths and weights. A plain state_dict
    needs its architecture: give ``source``/``name`` together with ``checkpoint``."""
    path = spec["checkpoint"]
    model = rebuild(read_pruned(path), path, build_model)
    if spec["num_classes"] is not None:
        head_classes = _out_features(model)
        if head_classes != spec["num_classes"]:
            raise UserError(
                f"{path}: the saved model has {head_classes} classes, the spec asks for "
                f"{spec['num_classes']}"
            )
    return model


def _nearest_message(kind: str, name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; {len(choices)} available"
