"""TransFuse3D: TransFuse (Zhang, Liu, Hu, "TransFuse: Fusing Transformers and CNNs for Medical Image
Segmentation", MICCAI 2021, arXiv 2102.08005) ported to 3D multi-modal MRI.

Two parallel encoders see the same 4-channel input:
- CNN branch: a 3D ResNet-34-style encoder (stem to 1/4, residual stages at 1/4, 1/8, 1/16; ResNet's last
  stage dropped, as in the paper) giving g^2, g^1, g^0.
- Transformer branch: a ViT on 16^3 patches (the paper's DeiT-S: width 384, 12 blocks, 6 heads) giving the
  token map t^0 at 1/16, progressively upsampled (x2 trilinear + double conv) to t^1 (1/8) and t^2 (1/4).
BiFusion at each scale i fuses (t^i, g^i) -> f^i: SE channel attention on t, CBAM spatial attention (7^3
conv) on g, the Hadamard bilinear term Conv(W_t t * W_g g), concatenation, residual block.
Decoder: attention-gated skips (Attention U-Net gates) f_hat^1 = Up(f^0) (+) AG(f^1), f_hat^2 = Up(f_hat^1)
(+) AG(f^2), (+) being concatenation followed by a double conv.

Deep supervision (placement as in the authors' released code, which the brief's example differs from):
three heads, each upsampled (trilinear) from its scale to the input size,
- heads[0]: on f_hat^2, the final decoder path at 1/4, weight 0.5 -- this is the eval-mode output;
- heads[1]: on t^2, the transformer branch upsampled to 1/4, weight 0.3;
- heads[2]: on f^0, the BiFusion map at 1/16, weight 0.2.
Weights are `TransFuse3D.deep_supervision_weights`; the loss itself is computed by the training code.

Design choices and deviations from the 2D paper:
- 3D everywhere; instance norm instead of batch norm in the CNN/fusion/decoder convolutions (the Attention
  U-Net gate keeps MONAI's batch norm); no ImageNet pretraining.
- The learned positional embedding is a 3D grid built for `img_size` and trilinearly interpolated when the
  token grid differs (other crop sizes, sliding windows, padded odd sizes).
- Input sizes that are not multiples of 16 are zero-padded at the end of each axis (zero is the background
  of z-scored MRI) and the logits are cropped back to the input size.
- `present` (B, 4) bool only zeroes the channels of absent modalities; TransFuse has no other
  missing-modality mechanism.
- Like the paper, the final prediction is made at 1/4 resolution and upsampled; no full-resolution skip.
"""

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import crop_to, pad_to_multiple
from .outputs import TransFuseAux
from .transfuse_blocks import BiFusion3D, ResNetBranch3D, SegHead3D, TokenTransformer3D, UpBlock3D

PATCH_SIZE = 16  # ViT patch edge; equals the CNN branch's deepest stride, so t^0 and g^0 align.


class TransFuse3D(nn.Module):
    """TransFuse in 3D. `TransFuse3D()` is the paper-sized TransFuse-S (ResNet-34 + DeiT-S widths).

    Args:
        in_channels: input channels (the 4 modalities in MODALITIES order).
        out_channels: region logits (whole tumor, tumor core, enhancing tumor).
        img_size: crop size the transformer's positional-embedding grid is built for (a multiple of 16);
            other sizes work through interpolation.
        cnn_widths: CNN channels at 1/4, 1/8, 1/16 (ResNet-34: 64, 128, 256). They are also the widths of
            the transformer maps t^2, t^1, of the fused maps f^2, f^1, f^0 and of the decoder.
        cnn_blocks: residual blocks per CNN stage (ResNet-34: 3, 4, 6).
        vit_hidden_size: transformer token width (DeiT-S: 384).
        vit_depth: transformer blocks (DeiT-S: 12).
        vit_heads: attention heads (DeiT-S: 6).
        vit_mlp_dim: transformer MLP width (DeiT-S: 1536).
        se_reductions: SE reduction ratio of the BiFusion modules at 1/16, 1/8, 1/4 (paper: 4, 2, 1).
        dropout: channel dropout on the branch outputs (paper: 0.2); BiFusion uses half of it.
        norm: MONAI norm name for the convolutional parts.
    """

    deep_supervision_weights = (0.5, 0.3, 0.2)
    size_multiple = PATCH_SIZE  # other sizes are padded up to it inside

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        img_size: Union[int, Sequence[int]] = 128,
        cnn_widths: Sequence[int] = (64, 128, 256),
        cnn_blocks: Sequence[int] = (3, 4, 6),
        vit_hidden_size: int = 384,
        vit_depth: int = 12,
        vit_heads: int = 6,
        vit_mlp_dim: int = 1536,
        se_reductions: Sequence[int] = (4, 2, 1),
        dropout: float = 0.2,
        norm: Union[str, tuple] = "instance",
    ):
        super().__init__()
        w4, w8, w16 = cnn_widths
        self.cnn = ResNetBranch3D(in_channels, cnn_widths, cnn_blocks, norm=norm)
        self.transformer = TokenTransformer3D(
            in_channels, img_size, PATCH_SIZE, vit_hidden_size, vit_depth, vit_heads, vit_mlp_dim
        )
        self.transformer_up1 = UpBlock3D(vit_hidden_size, w8, norm=norm)
        self.transformer_up2 = UpBlock3D(w8, w4, norm=norm)
        r16, r8, r4 = se_reductions
        self.fuse16 = BiFusion3D(vit_hidden_size, w16, w16, w16, r16, dropout / 2, norm)
        self.fuse8 = BiFusion3D(w8, w8, w8, w8, r8, dropout / 2, norm)
        self.fuse4 = BiFusion3D(w4, w4, w4, w4, r4, dropout / 2, norm)
        self.decode8 = UpBlock3D(w16, w8, skip_channels=w8, norm=norm)
        self.decode4 = UpBlock3D(w8, w4, skip_channels=w4, norm=norm)
        self.head_final = SegHead3D(w4, w4, out_channels, norm)
        self.head_transformer = SegHead3D(w4, w4, out_channels, norm)
        self.head_fused16 = SegHead3D(w16, w4, out_channels, norm)
        self.drop = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, present: Optional[torch.Tensor] = None
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, TransFuseAux]]:
        """x (B, 4, D, H, W) in MODALITIES order; present optional (B, 4) bool.

        Eval: logits (B, 3, D, H, W). Training: (logits, TransFuseAux(heads, weights)).
        """
        if present is not None:
            x = x * present.to(x.dtype)[:, :, None, None, None]
        x, size = pad_to_multiple(x, PATCH_SIZE)
        padded = tuple(int(s) for s in x.shape[2:])

        t16 = self.drop(self.transformer(x))
        t8 = self.drop(self.transformer_up1(t16))
        t4 = self.drop(self.transformer_up2(t8))
        g16, g8, g4 = (self.drop(g) for g in self.cnn(x))

        f16 = self.fuse16(t16, g16)
        f8 = self.fuse8(t8, g8)
        f4 = self.fuse4(t4, g4)
        out8 = self.decode8(f16, f8)
        out4 = self.decode4(out8, f4)

        logits = self._to_input(self.head_final(out4), padded, size)
        if not self.training:
            return logits
        heads = [
            logits,
            self._to_input(self.head_transformer(t4), padded, size),
            self._to_input(self.head_fused16(f16), padded, size),
        ]
        return logits, TransFuseAux(heads=heads, weights=tuple(self.deep_supervision_weights))

    @staticmethod
    def _to_input(logits: torch.Tensor, padded: Sequence[int], size: Sequence[int]) -> torch.Tensor:
        """Upsample head logits to the padded input size, then crop to the original size."""
        logits = F.interpolate(logits, size=padded, mode="trilinear", align_corners=False)
        return crop_to(logits, size)
