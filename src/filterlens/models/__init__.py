"""Architectures (:mod:`.build`, with filterlens' own in :mod:`.vgg`), layer discovery (:mod:`.layers`) and
checkpoints (:mod:`.checkpoints`). Every name below is importable from ``filterlens.models``."""
from .build import ModelSpec, available_models, build_model
from .checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, read_checkpoint, save_checkpoint
from .families import Discovery, discover
from .layers import Layer, candidate_layers, describe, list_layers, resolve_layers, select_layers, smallest_input
from .resnet_cifar import CIFAR_RESNET_DEPTHS, CifarResNet
from .vgg import VGG, VGG_CONFIGS, VGGBlock
from .vit_tiny import VIT_CONFIGS, TinyViT

__all__ = ["VIT_CONFIGS", "TinyViT", "CIFAR_RESNET_DEPTHS", "CifarResNet", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION",
           "Layer", "ModelSpec", "VGG", "VGGBlock", "VGG_CONFIGS",
           "Discovery", "available_models", "build_model", "candidate_layers", "describe", "discover", "list_layers",
           "load_checkpoint", "read_checkpoint", "resolve_layers", "save_checkpoint", "select_layers", "smallest_input"]
