"""Building blocks of TransFuse3D (Zhang, Liu, Hu, "TransFuse: Fusing Transformers and CNNs for Medical
Image Segmentation", MICCAI 2021, arXiv 2102.08005), ported from 2D to 3D.

Each class does one job: the CNN branch (`ResNetBranch3D`), the transformer branch (`TokenTransformer3D`),
the progressive upsampling of the transformer map (`UpBlock3D` without skip), the BiFusion module
(`BiFusion3D`, with CBAM-style `SpatialAttention3D`), the attention-gated decoder step (`UpBlock3D` with
skip), and a segmentation head (`SegHead3D`). MONAI blocks are used wherever MONAI has the piece.
"""

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from monai.networks.blocks import ChannelSELayer, Convolution, TransformerBlock, UnetBasicBlock, UnetResBlock
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

from .blocks import learned_position_grid, position_grid_for, tuple3


class ResNetBranch3D(nn.Module):
    """CNN branch: a 3D ResNet-34-style encoder returning maps at 1/4, 1/8 and 1/16 of the input.

    Stem: 7x7x7 convolution with stride 2 and a stride-2 max-pool (1/4), as in ResNet. Stages: basic
    residual blocks (MONAI `UnetResBlock`: conv-norm-act-conv-norm + projected identity); the first block of
    stages 2 and 3 has stride 2. As in TransFuse, ResNet's last stage (1/32) is dropped. Instance norm
    replaces batch norm (3D batches are small).

    Args:
        in_channels: input channels (4 MRI modalities).
        widths: channels of the three stages at 1/4, 1/8, 1/16 (ResNet-34: 64, 128, 256).
        blocks: residual blocks per stage (ResNet-34: 3, 4, 6).
        norm: MONAI norm name.
    """

    def __init__(
        self,
        in_channels: int = 4,
        widths: Sequence[int] = (64, 128, 256),
        blocks: Sequence[int] = (3, 4, 6),
        norm: Union[str, tuple] = "instance",
    ):
        super().__init__()
        if len(widths) != 3 or len(blocks) != 3:
            raise ValueError("widths and blocks must each have three entries (1/4, 1/8, 1/16).")
        self.stem = nn.Sequential(
            Convolution(3, in_channels, widths[0], strides=2, kernel_size=7, norm=norm, act="relu"),
            nn.MaxPool3d(kernel_size=3, stride=2, padding=1),
        )
        stages = []
        previous = widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(count):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(UnetResBlock(3, previous, width, kernel_size=3, stride=stride, norm_name=norm))
                previous = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (g at 1/16, g at 1/8, g at 1/4), coarsest first like TransFuse's g^0, g^1, g^2."""
        g2 = self.stages[0](self.stem(x))
        g1 = self.stages[1](g2)
        g0 = self.stages[2](g1)
        return g0, g1, g2


class TokenTransformer3D(nn.Module):
    """Transformer branch: ViT on non-overlapping cubic patches, returned as a token map at 1/patch_size.

    Patch embedding by a strided convolution, a learned positional embedding kept as a 3D grid (built for
    `img_size`) and trilinearly interpolated when the input grid differs, then MONAI `TransformerBlock`s
    (pre-norm, as DeiT) and a final LayerNorm. The tokens are reshaped back to (B, hidden, d, h, w).

    Args:
        in_channels: input channels.
        img_size: input size the positional embedding grid is built for (int or 3 ints).
        patch_size: cubic patch edge (16 in the paper).
        hidden_size: token width (DeiT-S: 384).
        depth: number of transformer blocks (DeiT-S: 12).
        num_heads: attention heads (DeiT-S: 6).
        mlp_dim: MLP width (DeiT-S: 4 * 384).
        dropout: dropout in the transformer blocks and after the embedding.
    """

    def __init__(
        self,
        in_channels: int = 4,
        img_size: Union[int, Sequence[int]] = 128,
        patch_size: int = 16,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_dim: int = 1536,
        dropout: float = 0.0,
    ):
        super().__init__()
        size = tuple3(img_size, "img_size")
        if any(s % patch_size for s in size):
            raise ValueError(f"img_size {size} must be a multiple of patch_size {patch_size}.")
        self.patch_size = patch_size
        self.embed = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = learned_position_grid(hidden_size, [s // patch_size for s in size])
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate=dropout, qkv_bias=True) for _ in range(depth)
        )
        for block in self.blocks:
            # MONAI builds this LayerNorm even without cross-attention, where it is never used; drop its
            # dead parameters (so every parameter trains).
            block.norm_cross_attn = nn.Identity()
        self.norm = nn.LayerNorm(hidden_size)

    def position_embedding(self, grid: Sequence[int]) -> torch.Tensor:
        """The positional embedding for a token grid, interpolated from the built grid when it differs."""
        return position_grid_for(self.pos_embed, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x)
        b, c, d, h, w = tokens.shape
        tokens = tokens + self.position_embedding((d, h, w))
        tokens = self.drop(tokens.flatten(2).transpose(1, 2))
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(b, c, d, h, w)


class SpatialAttention3D(nn.Module):
    """CBAM spatial attention (Woo et al., ECCV 2018) in 3D: channel-wise max and mean, a 7x7x7
    convolution to one map, sigmoid, multiplied onto the input."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = Convolution(3, 2, 1, kernel_size=kernel_size, norm=None, act=None, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class BiFusion3D(nn.Module):
    """TransFuse's BiFusion module at one scale, in 3D.

    t_hat = SE(t) (channel attention on the transformer map, MONAI `ChannelSELayer`);
    g_hat = SpatialAttention(g) (CBAM spatial attention on the CNN map);
    b_hat = Conv3(W_t t * W_g g) (Hadamard bilinear term of 1x1 projections);
    f = Residual([b_hat, g_hat, t_hat]) (MONAI `UnetResBlock` on the concatenation), then dropout.

    Args:
        t_channels: transformer-map channels.
        g_channels: CNN-map channels.
        inter_channels: channels of the bilinear term.
        out_channels: fused channels.
        se_reduction: SE reduction ratio.
        dropout: channel dropout after fusion.
        norm: MONAI norm name.
    """

    def __init__(
        self,
        t_channels: int,
        g_channels: int,
        inter_channels: int,
        out_channels: int,
        se_reduction: int = 4,
        dropout: float = 0.0,
        norm: Union[str, tuple] = "instance",
    ):
        super().__init__()
        self.channel_attention = ChannelSELayer(3, t_channels, r=min(se_reduction, t_channels))
        self.spatial_attention = SpatialAttention3D()
        self.w_t = Convolution(3, t_channels, inter_channels, kernel_size=1, norm=norm, act=None)
        self.w_g = Convolution(3, g_channels, inter_channels, kernel_size=1, norm=norm, act=None)
        self.bilinear = Convolution(3, inter_channels, inter_channels, kernel_size=3, norm=norm, act="relu")
        self.residual = UnetResBlock(
            3, t_channels + g_channels + inter_channels, out_channels, kernel_size=3, stride=1, norm_name=norm
        )
        self.drop = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        b_hat = self.bilinear(self.w_t(t) * self.w_g(g))
        fused = torch.cat([b_hat, self.spatial_attention(g), self.channel_attention(t)], dim=1)
        return self.drop(self.residual(fused))


class UpBlock3D(nn.Module):
    """Upsample x2 (trilinear), optionally concatenate an attention-gated skip, then a double convolution.

    Without skip: the transformer branch's progressive upsampling (t^0 -> t^1 -> t^2). With skip: the
    decoder step f_hat^{i+1} = Conv([Up(f_hat^i), AG(f^{i+1}, gate=Up(f_hat^i))]), the gate being MONAI's
    Attention U-Net `AttentionBlock` (Oktay et al., MIDL 2018).

    Args:
        in_channels: channels of the coarse input.
        out_channels: output channels.
        skip_channels: channels of the skip (0: no skip).
        norm: MONAI norm name.
    """

    def __init__(
        self, in_channels: int, out_channels: int, skip_channels: int = 0, norm: Union[str, tuple] = "instance"
    ):
        super().__init__()
        self.gate = None
        if skip_channels:
            self.gate = AttentionBlock(3, f_int=max(skip_channels // 2, 1), f_g=in_channels, f_l=skip_channels)
        self.conv = UnetBasicBlock(
            3, in_channels + skip_channels, out_channels, kernel_size=3, stride=1, norm_name=norm
        )

    def forward(self, x: torch.Tensor, skip: Union[torch.Tensor, None] = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)
        if self.gate is not None:
            x = torch.cat([self.gate(x, skip), x], dim=1)
        return self.conv(x)


class SegHead3D(nn.Module):
    """Segmentation head: 3x3x3 conv-norm-act, then a 1x1 conv to region logits."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, norm: Union[str, tuple] = "instance"):
        super().__init__()
        self.layers = nn.Sequential(
            Convolution(3, in_channels, mid_channels, kernel_size=3, norm=norm, act="relu"),
            Convolution(3, mid_channels, out_channels, kernel_size=1, conv_only=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
