"""The registered networks: MONAI building blocks, configured for DP training."""

from __future__ import annotations

from monai.networks.nets import Classifier, DenseNet121
from torch import nn

from fedmed.models.registry import register_model


@register_model("small_cnn")
def small_cnn(shape: tuple[int, ...], in_channels: int) -> nn.Module:
    """Three strided conv blocks (about 25k weights at 64x64): fast enough for CI and CPUs."""
    return Classifier(
        in_shape=(in_channels, *shape),
        classes=1,
        channels=(16, 32, 32),
        strides=(2, 2, 2),
        num_res_units=0,
        act=("relu", {"inplace": False}),
        norm=("group", {"num_groups": 4}),
    )


@register_model("small_cnn_3d", spatial_dims=3)
def small_cnn_3d(shape: tuple[int, ...], in_channels: int) -> nn.Module:
    """small_cnn for volumes: three strided 3-D conv blocks (about 50k weights at 32x64x64), for CPUs and CI."""
    return small_cnn(shape, in_channels)  # MONAI's Classifier takes its dimensions from in_shape


@register_model("densenet121")
def densenet121(shape: tuple[int, ...], in_channels: int) -> nn.Module:
    """DenseNet121 (Huang et al. 2017), the CheXNet backbone, with GroupNorm for DP-SGD."""
    return _densenet121(len(shape), in_channels)


@register_model("densenet121_3d", spatial_dims=3)
def densenet121_3d(shape: tuple[int, ...], in_channels: int) -> nn.Module:
    """DenseNet121 with 3-D convolutions, as in MONAI's CT and MR classification tutorials."""
    return _densenet121(len(shape), in_channels)


def _densenet121(spatial_dims: int, in_channels: int) -> nn.Module:
    # Global pooling makes the network independent of the input's size.
    return DenseNet121(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=1,
        norm=("group", {"num_groups": 8}),
        act=("relu", {"inplace": False}),
    )
