"""Architectures (:mod:`.build`, with filterlens' own in :mod:`.vgg`), layer discovery (:mod:`.layers`) and
checkpoints (:mod:`.checkpoints`). Every name below is importable from ``filterlens.models``."""
from .build import ModelSpec, available_models, build_model
from .checkpoints import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, read_checkpoint,
                          save_checkpoint)
from .layers import Layer, candidate_layers, list_layers, select_layers
from .vgg import VGG, VGG_CONFIGS, VGGBlock

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "Layer", "ModelSpec", "VGG", "VGGBlock", "VGG_CONFIGS",
           "available_models", "build_model", "candidate_layers", "list_layers", "load_checkpoint",
           "read_checkpoint", "save_checkpoint", "select_layers"]
