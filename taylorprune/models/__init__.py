"""Model sources: builtin CIFAR-style ResNets, an MLP, a small VGG; torchvision; timm; saved models.

Importing the package registers every source in :data:`MODELS` and every builtin architecture in
:data:`BUILTIN`.
"""

from taylorprune.models import cifar_resnet, mlp, sources, vgg  # noqa: F401  (they register)
from taylorprune.models._factory import (
    BUILTIN,
    MODELS,
    build_model,
    normalize_spec,
    parse_model_string,
)
from taylorprune.models.arch import arch_of, model_spec_for_save
from taylorprune.models.cifar_resnet import CifarResNet
from taylorprune.models.mlp import MLP
from taylorprune.models.vgg import VGGSmall

__all__ = [
    "BUILTIN",
    "MLP",
    "MODELS",
    "CifarResNet",
    "VGGSmall",
    "arch_of",
    "build_model",
    "model_spec_for_save",
    "normalize_spec",
    "parse_model_string",
]
