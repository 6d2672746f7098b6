"""jresnet: typed, shape-checked ResNets for JAX in (B, C, H, W) layout, built on Flax NNX."""

from jresnet.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, ShortcutOptionA
from jresnet.convert import load_state_dict, load_weights_file, save_safetensors, state_dict
from jresnet.functional import apply, init
from jresnet.layers import AvgPool2d, BatchNorm2d, Conv2d, DropPath, GlobalAvgPool, Linear, MaxPool2d, ReLU
from jresnet.models import ResNet, ResNetSpec
from jresnet.registry import create_model, get_spec, list_models, register_model
from jresnet.shapes import ConvGeometry, explain, out_size, receptive_field, same_padding
from jresnet.summary import Summary, check_model, summary
from jresnet.typing import Images, Labels, Logits, ShapeError, set_checks

__version__ = "0.1.0"

__all__ = [
    "AvgPool2d",
    "BasicBlock",
    "BatchNorm2d",
    "Bottleneck",
    "Conv2d",
    "ConvGeometry",
    "DropPath",
    "GlobalAvgPool",
    "Images",
    "Labels",
    "Linear",
    "Logits",
    "MaxPool2d",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ReLU",
    "ResNet",
    "ResNetSpec",
    "ShapeError",
    "ShortcutOptionA",
    "Summary",
    "apply",
    "check_model",
    "create_model",
    "explain",
    "get_spec",
    "init",
    "list_models",
    "load_state_dict",
    "load_weights_file",
    "out_size",
    "receptive_field",
    "register_model",
    "same_padding",
    "save_safetensors",
    "set_checks",
    "state_dict",
    "summary",
]
