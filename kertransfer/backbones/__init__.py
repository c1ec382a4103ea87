"""Backbones: a registry of pretrained CNN bodies for transfer learning."""

from kertransfer.backbones.custom import register_keras_backbone
from kertransfer.backbones.efficientnet_lite import efficientnet_lite0
from kertransfer.backbones.efficientnet_lite import efficientnet_lite1
from kertransfer.backbones.efficientnet_lite import efficientnet_lite2
from kertransfer.backbones.keras_apps import build_keras_app
from kertransfer.backbones.registry import BackboneSpec
from kertransfer.backbones.registry import assign_layer_groups
from kertransfer.backbones.registry import build_backbone
from kertransfer.backbones.registry import cache_dir
from kertransfer.backbones.registry import get_backbone
from kertransfer.backbones.registry import list_backbones
from kertransfer.backbones.registry import register_backbone
from kertransfer.backbones.resnet import build_resnet
from kertransfer.backbones.resnet import convert_torchvision_state_dict
from kertransfer.backbones.resnet import resnet18
from kertransfer.backbones.resnet import resnet34
from kertransfer.backbones.resnet import resnext50_32x4d
from kertransfer.backbones.resnet import resnext101_32x8d
from kertransfer.backbones.resnet import tv_resnet50

__all__ = [
    "BackboneSpec",
    "assign_layer_groups",
    "build_backbone",
    "cache_dir",
    "get_backbone",
    "list_backbones",
    "register_backbone",
    "register_keras_backbone",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "build_resnet",
    "convert_torchvision_state_dict",
    "resnet18",
    "resnet34",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "tv_resnet50",
    "build_keras_app",
]
