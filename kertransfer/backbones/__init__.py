"""Backbones: a registry of pretrained CNN bodies for transfer learning."""

from kertransfer.backbones.registry import BackboneSpec
from kertransfer.backbones.registry import assign_layer_groups
from kertransfer.backbones.registry import build_backbone
from kertransfer.backbones.registry import cache_dir
from kertransfer.backbones.registry import get_backbone
from kertransfer.backbones.registry import list_backbones
from kertransfer.backbones.registry import register_backbone
from kertransfer.backbones.efficientnet_lite import efficientnet_lite0

__all__ = [
    "BackboneSpec",
    "assign_layer_groups",
    "build_backbone",
    "cache_dir",
    "get_backbone",
    "list_backbones",
    "register_backbone",
    "efficientnet_lite0",
]
