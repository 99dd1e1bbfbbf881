"""The registered networks: MONAI building blocks, configured for DP training."""

from __future__ import annotations

from monai.networks.nets import Classifier, DenseNet121
from torch import nn

from fedmed.models.registry import register_model


@register_model("small_cnn")
def small_cnn(image_size: int, in_channels: int) -> nn.Module:
    """Three strided conv blocks (about 25k weights at 64x64): fast enough for CI and CPUs."""
    return Classifier(
        in_shape=(in_channels, image_size, image_size),
        classes=1,
        channels=(16, 32, 32),
        strides=(2, 2, 2),
        num_res_units=0,
        act=("relu", {"inplace": False}),
        norm=("group", {"num_groups": 4}),
    )


@register_model("densenet121")
def densenet121(image_size: int, in_channels: int) -> nn.Module:
    """DenseNet121 (Huang et al. 2017), the CheXNet backbone, with GroupNorm for DP-SGD."""
    del image_size  # global pooling makes the network size-independent
    return DenseNet121(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=1,
        norm=("group", {"num_groups": 8}),
        act=("relu", {"inplace": False}),
    )
