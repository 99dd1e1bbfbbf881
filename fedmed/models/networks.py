"""The registered networks: MONAI building blocks, configured for DP training.

Opacus 1.6 computes per-sample gradients with its own samplers for Conv1-3d, Linear,
GroupNorm, InstanceNorm1-3d (affine or not), LayerNorm, RMSNorm and Embedding
(opacus/grad_sample/); any other layer with weights (PReLU, ConvTranspose2d/3d) falls back to
functorch (``vmap`` of the layer's own gradient), exact but slower. The segmentation networks
are configured with that in mind; tests/models checks each one's per-sample gradients against
one backward pass per sample.
"""

from __future__ import annotations

import torch
from monai.networks.blocks.segresnet_block import ResBlock
from monai.networks.nets import Classifier, DenseNet121, SegResNet, UNet
from torch import nn

from fedmed.models.registry import ModelKind, register_model

SEGMENTER_DOWNSAMPLINGS = 2
"""Stride-2 steps of the registered U-Net and SegResNet: input sides must be divisible by 2**2."""
_SEGMENTER_RULE = f"{SEGMENTER_DOWNSAMPLINGS} stride-2 downsamplings whose skip connections must meet again"


@register_model("small_cnn")
def small_cnn(shape: tuple[int, ...], in_channels: int, outputs: int) -> nn.Module:
    """Three strided conv blocks (about 25k weights at 64x64): fast enough for CI and CPUs."""
    return Classifier(
        in_shape=(in_channels, *shape),
        classes=outputs,
        channels=(16, 32, 32),
        strides=(2, 2, 2),
        num_res_units=0,
        act=("relu", {"inplace": False}),
        norm=("group", {"num_groups": 4}),
    )


@register_model("small_cnn_3d", spatial_dims=3)
def small_cnn_3d(shape: tuple[int, ...], in_channels: int, outputs: int) -> nn.Module:
    """small_cnn for volumes: three strided 3-D conv blocks (about 50k weights at 32x64x64), for CPUs and CI."""
    return small_cnn(shape, in_channels, outputs)  # MONAI's Classifier takes its dimensions from in_shape


_DENSENET_MIN_SIDE = 29
_DENSENET_RULE = "it halves its input five times; a smaller side vanishes before its last pooling"


@register_model("densenet121", min_side=_DENSENET_MIN_SIDE, size_reason=_DENSENET_RULE)
def densenet121(shape: tuple[int, ...], in_channels: int, outputs: int) -> nn.Module:
    """DenseNet121 (Huang et al. 2017), the CheXNet backbone, with GroupNorm for DP-SGD."""
    return _densenet121(len(shape), in_channels, outputs)


@register_model("densenet121_3d", spatial_dims=3, min_side=_DENSENET_MIN_SIDE, size_reason=_DENSENET_RULE)
def densenet121_3d(shape: tuple[int, ...], in_channels: int, outputs: int) -> nn.Module:
    """DenseNet121 with 3-D convolutions, as in MONAI's CT and MR classification tutorials."""
    return _densenet121(len(shape), in_channels, outputs)


def _densenet121(spatial_dims: int, in_channels: int, outputs: int) -> nn.Module:
    # Global pooling makes the network independent of the input's size.
    return DenseNet121(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=outputs,
        norm=("group", {"num_groups": 8}),
        act=("relu", {"inplace": False}),
    )


# --- segmentation ------------------------------------------------------------------------------


@register_model(
    "unet",
    kind=ModelKind.SEGMENTER,
    size_multiple=2**SEGMENTER_DOWNSAMPLINGS,
    size_reason=_SEGMENTER_RULE,
)
def unet(shape: tuple[int, ...], in_channels: int, outputs: int) -> nn.Module:
    """U-Net (Ronneberger et al., MICCAI 2015) as MONAI builds it, small: channels (8, 16, 32), strides (2, 2).

    About 10k weights in 2-D. For DP-SGD: ReLU instead of MONAI's default PReLU, whose weight
    has no Opacus grad sampler (functorch fallback, 1.3-2x slower per step in 2-D for one slope
    per layer); InstanceNorm without affine weights as MONAI's default (per sample, so no
    mixing across the batch; nothing to leak or clip). MONAI's U-Net up-samples with
    ConvTranspose, the only option it has: Opacus 1.6 has no sampler for it and uses functorch,
    exact (tests/models compares it with per-sample backward passes).
    """
    return UNet(
        spatial_dims=len(shape),
        in_channels=in_channels,
        out_channels=outputs,
        channels=(8, 16, 32),
        strides=(2,) * SEGMENTER_DOWNSAMPLINGS,
        num_res_units=0,
        act=("relu", {"inplace": False}),
        norm="instance",
    )


@register_model(
    "unet_3d",
    spatial_dims=3,
    kind=ModelKind.SEGMENTER,
    size_multiple=2**SEGMENTER_DOWNSAMPLINGS,
    size_reason=_SEGMENTER_RULE,
)
def unet_3d(shape: tuple[int, ...], in_channels: int, outputs: int) -> nn.Module:
    """unet with 3-D convolutions (about 29k weights), as in MONAI's 3-D segmentation tutorials."""
    return unet(shape, in_channels, outputs)


@register_model(
    "segresnet",
    kind=ModelKind.SEGMENTER,
    size_multiple=2**SEGMENTER_DOWNSAMPLINGS,
    size_reason=_SEGMENTER_RULE,
)
def segresnet(shape: tuple[int, ...], in_channels: int, outputs: int) -> nn.Module:
    """SegResNet (Myronenko, BrainLes 2018) without its VAE branch, small: 8 initial filters, blocks (1, 2, 2) / (1, 1).

    About 60k weights in 2-D. GroupNorm(8) as MONAI's default (Opacus has a sampler) and
    linear-interpolation up-sampling (no weights); ReLU not in place, and MONAI's residual
    blocks rewritten to add out of place: their ``x += identity`` modifies the output of a
    convolution that Opacus hooks, which fails the backward ("Output 0 of
    BackwardHookFunction is a view and is being modified inplace"), and ModuleValidator
    cannot see it.
    """
    network = SegResNet(
        spatial_dims=len(shape),
        init_filters=8,
        in_channels=in_channels,
        out_channels=outputs,
        blocks_down=(1, 2, 2),
        blocks_up=(1,) * SEGMENTER_DOWNSAMPLINGS,
        act=("RELU", {"inplace": False}),
        norm=("GROUP", {"num_groups": 8}),
        upsample_mode="nontrainable",
    )
    for module in network.modules():
        if type(module) is ResBlock:
            module.__class__ = OutOfPlaceResBlock  # same submodules and weights, so state_dict keys stay MONAI's
    return network


@register_model(
    "segresnet_3d",
    spatial_dims=3,
    kind=ModelKind.SEGMENTER,
    size_multiple=2**SEGMENTER_DOWNSAMPLINGS,
    size_reason=_SEGMENTER_RULE,
)
def segresnet_3d(shape: tuple[int, ...], in_channels: int, outputs: int) -> nn.Module:
    """segresnet with 3-D convolutions (about 178k weights), the BraTS architecture scaled down."""
    return segresnet(shape, in_channels, outputs)


class OutOfPlaceResBlock(ResBlock):
    """MONAI's SegResNet residual block with the skip added out of place, which Opacus' hooks allow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        x = self.conv1(self.act(self.norm1(x)))
        x = self.conv2(self.act(self.norm2(x)))
        return x + identity
