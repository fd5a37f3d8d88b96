"""SwinFUSE: Swin UNETR with a domain-invariance module and self-supervised pretraining heads.

Paper: Talasila, Maity, Priyakumar, "Self-Supervised Modality-Agnostic Pre-Training of Swin Transformers"
(SwinFUSE, ISBI 2024, arXiv 2405.12781). SwinFUSE pretrains a Swin UNETR encoder on single-channel CT and
MRI volumes with masked-volume inpainting, 3D-rotation prediction and contrastive learning, and inserts a
domain-invariance module (DIM) between the patch embedding and the Swin stages: two multi-head attentions
attend each view's patch embedding to the other's, and the two results are averaged.

What the two DIM views are here. The paper's released code feeds the same patch embedding of one input to
both attentions (the views differ only through dropout). With four MRI channels we give the DIM two genuinely
different views of the same input:
- view A, modality-specific: the Swin UNETR patch embedding of the 4-channel input (absent channels zeroed),
  which keeps which-signal-came-from-which-modality (e.g. T1ce vs. T1 for enhancing tumor);
- view B, modality-agnostic: one shared single-channel patch embedding applied to each present modality
  separately and averaged over the present modalities, so it cannot depend on which modality is which.
Each view queries the other (bidirectional cross-attention, MONAI `CrossAttentionBlock`), and the two
cross-attended results are averaged and fed to the Swin stages. Inference needs nothing but the input.

Pretraining treats each modality as a separate single-channel view, as the paper does: `pretrain_forward`
accepts (B, 1, D, H, W), replicates the view into the four channels (view A then sees the same volume in
every channel, view B reduces to the shared embedding of that volume) and averages the reconstruction back
to one channel, so the same weights serve pretraining and 4-channel segmentation without a
`pretrain_in_channels` switch. A 4-channel input is accepted too.

Design choices and deviations:
- Global attention over all patch tokens (what the released code approximates by reshaping) does not scale
  to 3D crops, so the DIM attends within non-overlapping windows of `dim_window_size`^3 tokens, and each
  direction is pre-norm with a residual (query + CrossAttention(LN(query), LN(other))) so the Swin stages
  start from a sensible embedding; the paper averages the raw attention outputs.
- SSL heads follow the Swin UNETR self-supervised recipe (Tang et al., CVPR 2022) that SwinFUSE builds on:
  rotation (4 classes) and contrastive projection (MLP to `projection_dim`) on the globally averaged
  deepest Swin features (the released code reads single tokens), reconstruction by a conv/upsample head from
  the deepest features back to the input channels. The paper's KDE/JSD density-matching term is a loss on
  features and is computed by the training code (Training/ssl_losses.py, on `SwinFUSEPretrainOutput.deepest`).
- Sizes that are not multiples of 32 (Swin UNETR's five halvings), or are below 64 (a 1-voxel bottleneck
  breaks Swin UNETR's instance norms), are zero-padded at the end of each axis and the outputs cropped back.
- `present` (B, 4) bool zeroes absent channels and excludes them from view B's average.
- The SSL heads get no gradient from the segmentation forward; they train through `pretrain_forward`.
- Exports with torch.export for a fixed input size (tested).
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
from monai.networks.blocks import Convolution, CrossAttentionBlock, PatchEmbed
from monai.networks.nets import SwinUNETR
from torch import nn

from .blocks import crop_to, pad_to_multiple
from .outputs import SwinFUSEAux

SIZE_MULTIPLE = 32  # patch size 2, then four 2x patch mergings
MIN_SIZE = 64  # below it the 1/32 bottleneck is 1 voxel, which instance norm cannot normalize


@dataclass
class SwinFUSEPretrainOutput:
    """What `SwinFUSE.pretrain_forward` returns for the self-supervised losses.

    rotation_logits: (B, 4) logits of the rotation class (0, 90, 180, 270 degrees).
    projection: (B, projection_dim) contrastive embedding (not normalized).
    reconstruction: inpainting reconstruction, same shape as the pretraining input.
    deepest: (B, 16 * feature_size, d, h, w) deepest Swin features; their voxels are the samples of the
        density-matching (KDE) term.
    """

    rotation_logits: torch.Tensor
    projection: torch.Tensor
    reconstruction: torch.Tensor
    deepest: torch.Tensor


def _to_windows(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B * windows, size**3, C), non-overlapping cubic windows."""
    b, c, d, h, w = x.shape
    x = x.reshape(b, c, d // size, size, h // size, size, w // size, size)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(-1, size**3, c)


def _from_windows(x: torch.Tensor, shape: Sequence[int], size: int) -> torch.Tensor:
    """Inverse of `_to_windows` for a tensor of shape `shape` (B, C, D, H, W)."""
    b, c, d, h, w = shape
    x = x.reshape(b, d // size, h // size, w // size, size, size, size, c)
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, c, d, h, w)


class DomainInvarianceModule(nn.Module):
    """Bidirectional windowed cross-attention between two views' patch embeddings, averaged.

    a' = a + CrossAttn_ab(LN_a(a), context=LN_b(b)); b' = b + CrossAttn_ba(LN_b(b), context=LN_a(a));
    output (a' + b') / 2, all within non-overlapping windows of `window_size`^3 tokens.

    Args:
        channels: embedding width.
        num_heads: attention heads.
        window_size: window edge in tokens; must divide the token grid (16 divides every padded grid).
    """

    def __init__(self, channels: int, num_heads: int, window_size: int = 4):
        super().__init__()
        self.window_size = window_size
        self.norm_a = nn.LayerNorm(channels)
        self.norm_b = nn.LayerNorm(channels)
        self.a_from_b = CrossAttentionBlock(channels, num_heads, qkv_bias=True, use_flash_attention=True)
        self.b_from_a = CrossAttentionBlock(channels, num_heads, qkv_bias=True, use_flash_attention=True)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        shape = a.shape
        wa, wb = _to_windows(a, self.window_size), _to_windows(b, self.window_size)
        na, nb = self.norm_a(wa), self.norm_b(wb)
        a2 = wa + self.a_from_b(na, context=nb)
        b2 = wb + self.b_from_a(nb, context=na)
        return _from_windows((a2 + b2) / 2, shape, self.window_size)


class SSLHeads(nn.Module):
    """Rotation, contrastive-projection and inpainting-reconstruction heads on the deepest Swin features.

    Args:
        channels: channels of the deepest Swin features (16 * feature_size).
        out_channels: reconstruction channels (the network's input channels).
        projection_dim: contrastive embedding size.
        upsamplings: x2 upsamplings from the deepest features to the input resolution (5 for Swin UNETR).
    """

    def __init__(self, channels: int, out_channels: int, projection_dim: int = 128, upsamplings: int = 5):
        super().__init__()
        self.rotation = nn.Linear(channels, 4)
        self.projection = nn.Sequential(nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, projection_dim))
        layers = []
        width = channels
        for _ in range(upsamplings):
            nxt = max(width // 2, channels // 16)
            layers += [
                Convolution(3, width, nxt, kernel_size=3, norm="instance", act="leakyrelu"),
                nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
            ]
            width = nxt
        layers.append(Convolution(3, width, out_channels, kernel_size=1, conv_only=True))
        self.reconstruction = nn.Sequential(*layers)

    def forward(self, deepest: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = deepest.mean(dim=(2, 3, 4))
        return self.rotation(pooled), self.projection(pooled), self.reconstruction(deepest)


class SwinFUSE(nn.Module):
    """Swin UNETR (MONAI) + domain-invariance module + SSL heads. `SwinFUSE()` is the paper-sized model.

    Args:
        in_channels: input channels (the 4 modalities in MODALITIES order).
        out_channels: region logits (whole tumor, tumor core, enhancing tumor).
        feature_size: Swin UNETR embedding width (paper: 48; multiple of 12).
        depths: Swin blocks per stage (paper: 2, 2, 2, 2).
        num_heads: attention heads per stage (paper: 3, 6, 12, 24).
        window_size: Swin attention window (paper: 7).
        dim_window_size: DIM attention window edge in tokens (1, 2, 4, 8 or 16).
        dim_heads: DIM attention heads (default: num_heads[0]).
        projection_dim: contrastive projection size.
        drop_rate: dropout of the Swin encoder.
        attn_drop_rate: attention dropout of the Swin encoder.
        dropout_path_rate: stochastic depth of the Swin encoder.
    """

    size_multiple = SIZE_MULTIPLE  # other sizes are padded up to it (and to MIN_SIZE) inside

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        dim_window_size: int = 4,
        dim_heads: Optional[int] = None,
        projection_dim: int = 128,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        dropout_path_rate: float = 0.0,
    ):
        super().__init__()
        if (SIZE_MULTIPLE // 2) % dim_window_size:
            raise ValueError(f"dim_window_size must divide {SIZE_MULTIPLE // 2}, got {dim_window_size}.")
        self.in_channels = in_channels
        self.backbone = SwinUNETR(
            in_channels=in_channels,
            out_channels=out_channels,
            feature_size=feature_size,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            dropout_path_rate=dropout_path_rate,
            normalize=True,
        )
        self.modality_embed = PatchEmbed(patch_size=2, in_chans=1, embed_dim=feature_size, norm_layer=None)
        self.dim = DomainInvarianceModule(feature_size, dim_heads or num_heads[0], dim_window_size)
        self.ssl = SSLHeads(16 * feature_size, in_channels, projection_dim)

    def _encode(
        self, x: torch.Tensor, present: Optional[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both DIM views, the DIM, the Swin stages. Returns (hidden states, view_a, view_b, fused)."""
        swin = self.backbone.swinViT
        b, m = x.shape[:2]
        if present is None:
            weights = torch.ones((b, m), dtype=x.dtype, device=x.device)
        else:
            weights = present.to(x.dtype)  # the caller has zeroed the absent channels
        view_a = swin.patch_embed(x)
        per_modality = self.modality_embed(x.reshape(b * m, 1, *x.shape[2:]))
        per_modality = per_modality.reshape(b, m, *per_modality.shape[1:])
        w = weights[:, :, None, None, None, None]
        view_b = (per_modality * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
        fused = swin.pos_drop(self.dim(view_a, view_b))
        hidden = [swin.proj_out(fused, True)]
        h = fused
        for stage in (swin.layers1, swin.layers2, swin.layers3, swin.layers4):
            h = stage[0](h.contiguous())
            hidden.append(swin.proj_out(h, True))
        return hidden, view_a, view_b, fused

    def forward(
        self, x: torch.Tensor, present: Optional[torch.Tensor] = None
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, SwinFUSEAux]]:
        """x (B, 4, D, H, W) in MODALITIES order; present optional (B, 4) bool.

        Eval: logits (B, 3, D, H, W). Training: (logits, SwinFUSEAux).
        """
        if present is not None:
            x = x * present.to(x.dtype)[:, :, None, None, None]
        x, size = pad_to_multiple(x, SIZE_MULTIPLE, MIN_SIZE)
        hidden, view_a, view_b, fused = self._encode(x, present)
        net = self.backbone
        enc0 = net.encoder1(x)
        enc1 = net.encoder2(hidden[0])
        enc2 = net.encoder3(hidden[1])
        enc3 = net.encoder4(hidden[2])
        dec4 = net.encoder10(hidden[4])
        dec3 = net.decoder5(dec4, hidden[3])
        dec2 = net.decoder4(dec3, enc3)
        dec1 = net.decoder3(dec2, enc2)
        dec0 = net.decoder2(dec1, enc1)
        logits = crop_to(net.out(net.decoder1(dec0, enc0)), size)
        if not self.training:
            return logits
        return logits, SwinFUSEAux(view_a=view_a, view_b=view_b, fused=fused, bottleneck=hidden[4])

    def pretrain_forward(self, x: torch.Tensor) -> SwinFUSEPretrainOutput:
        """Self-supervised pass on one view: x (B, 1, D, H, W) (one modality) or (B, 4, D, H, W).

        A single-channel view is replicated into the four channels; its reconstruction is the mean of the
        four reconstructed channels, so `reconstruction` always has the input's shape.
        """
        channels = x.shape[1]
        if channels == 1:
            x = x.expand(-1, self.in_channels, -1, -1, -1)
        elif channels != self.in_channels:
            raise ValueError(f"pretrain_forward takes 1 or {self.in_channels} channels, got {channels}.")
        x, size = pad_to_multiple(x, SIZE_MULTIPLE, MIN_SIZE)
        hidden, _, _, _ = self._encode(x, None)
        rotation, projection, reconstruction = self.ssl(hidden[4])
        reconstruction = crop_to(reconstruction, size)
        if channels == 1:
            reconstruction = reconstruction.mean(dim=1, keepdim=True)
        return SwinFUSEPretrainOutput(rotation, projection, reconstruction, hidden[4])
