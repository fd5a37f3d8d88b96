"""Cross-modality guided glioma grading (HGG vs LGG) from the four MRI modalities.

Paper: "Cross-modality guidance-aided multi-modal learning with dual attention for MRI brain tumor
grading", arXiv:2401.09029 (2024). Written from the paper's description; no code was copied.

Architecture as built here:

* **One feature extractor per modality**, each a 3D ResNet with mixed convolutions shaped like
  mc3-18 (Tran et al., CVPR 2018): a stem conv with kernel ``stem_kernel`` = (3, 7, 7) and stride
  ``stem_stride`` = (1, 2, 2) (the D axis, MRI slices, plays the role of video time), a first
  residual stage of full 3x3x3 convs, and three later stages of 1x3x3 ("no temporal") convs that
  halve H and W only; ``widths`` = 64/128/256/512 and ``blocks`` = 2/2/2/2 at paper size. Residual
  blocks are MONAI ``UnetResBlock`` with ReLU (convs keep their bias, unlike torchvision's mc3_18).
* **Cross-modality guidance**: T1ce is the primary modality. Its last-stage feature map is
  upsampled trilinearly to the resolution of each secondary stream (T1, T2, FLAIR) after stage
  ``guide_stage`` (default 3, i.e. the input of the last stage: 1/8 of H and W with the default
  stem), concatenated there with the secondary's features and projected back to that stage's width
  by a 1x1x1 conv-norm-ReLU (one per secondary stream); the secondary stream then runs its remaining
  stages. The primary stream receives no guidance.
* **Dual attention** on each stream's last-stage features (one module per stream): *position
  attention* over the H x W positions of each slice (DANet-style: 1x1 query/key with
  ``channels // attention_reduction`` channels, 1x1 value, softmax over positions, per slice) and
  *slice attention* across the D axis (query/key from each slice's average descriptor, softmax
  over slices, applied to the slices' feature maps - a DANet channel-attention analogue over
  slices). Both are computed from the same input and added with learnable scales initialised to 0
  (y = x + g_p * P(x) + g_s * S(x)), so training starts from the plain backbone.
* **Heads**: global average pooling; a primary head (dropout, linear) on T1ce only and a fused head
  (dropout, linear) on the concatenation of the four streams' pooled features. Eval returns the
  fused logits (B, 2) ordered (HGG, LGG); training returns ``(fused, CMGAux(primary_logits))`` so
  the training code can add the primary head's loss.
* ``present`` (optional (B, 4) bool) zeroes the pooled features of absent secondary modalities in
  the fused head; T1ce must be present (it drives the guidance and the primary head).
* Any input size works (the primary features are resized to the secondary's size, pooling is
  global); D is never downsampled with the default strides, so attention across slices sees every
  slice.

Sizes: ``CrossModalityGuidedGrader()`` has about 48 M parameters (4 x ~11.4 M for the streams; the
paper's exact count is not reproduced) and costs 1.8 TMACs (3.6 TFLOPs, FlopCounterMode) at
1 x 4 x 128^3, almost all in the first residual stage, which keeps every slice at 64 x 64 with 64
channels in four streams; ``stem_stride=2`` (halving D too) about halves that. A compact CPU variant is e.g.
``CrossModalityGuidedGrader(widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1))``.
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UnetResBlock

from ..modalities import MODALITIES
from .blocks import present_mask, tuple3
from .outputs import CMGAux

NormType = Union[str, Tuple]


class MixedConvResNet(nn.Module):
    """mc3-18-shaped 3D ResNet on one modality: ``stem`` then ``stages`` (lists kept for guided use)."""

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        stem_kernel: Sequence[int],
        stem_stride: Sequence[int],
        norm: NormType,
    ):
        super().__init__()
        self.stem = Convolution(3, 1, widths[0], strides=stem_stride, kernel_size=stem_kernel, norm=norm, act="relu")
        self.stages = nn.ModuleList()
        c_in = widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            kernel = (3, 3, 3) if i == 0 else (1, 3, 3)
            stride = (1, 1, 1) if i == 0 else (1, 2, 2)
            layers = []
            for j in range(count):
                layers.append(
                    UnetResBlock(3, c_in, width, kernel_size=kernel, stride=stride if j == 0 else 1,
                                 norm_name=norm, act_name="relu")
                )
                c_in = width
            self.stages.append(nn.Sequential(*layers))


class DualAttention(nn.Module):
    """Position attention over H x W within each slice plus attention across slices (D), both residual."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        inner = max(channels // reduction, 1)
        conv1 = lambda c_out: Convolution(3, channels, c_out, kernel_size=1, conv_only=True)
        self.query, self.key, self.value = conv1(inner), conv1(inner), conv1(channels)
        self.slice_query = nn.Linear(channels, inner)
        self.slice_key = nn.Linear(channels, inner)
        self.position_scale = nn.Parameter(torch.zeros(1))
        self.slice_scale = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        # Position attention: each slice's H*W positions attend to each other.
        q = self.query(x).flatten(3)  # (B, c', D, N)
        k = self.key(x).flatten(3)
        v = self.value(x).flatten(3)  # (B, C, D, N)
        scale = q.shape[1] ** -0.5
        attention = torch.softmax(torch.einsum("bcdn,bcdm->bdnm", q, k) * scale, dim=-1)
        position = torch.einsum("bdnm,bcdm->bcdn", attention, v).reshape(b, c, d, h, w)
        # Slice attention: slices attend to each other through their average descriptors.
        descriptor = x.mean(dim=(3, 4)).transpose(1, 2)  # (B, D, C)
        sq, sk = self.slice_query(descriptor), self.slice_key(descriptor)
        across = torch.softmax(sq @ sk.transpose(1, 2) * sq.shape[-1] ** -0.5, dim=-1)  # (B, D, D)
        slices = torch.einsum("bde,bcehw->bcdhw", across, x)
        return x + self.position_scale * position + self.slice_scale * slices


class CrossModalityGuidedGrader(nn.Module):
    """CMG grader (see the module docstring for the design).

    Args:
        widths: channels of the four residual stages (the stem has ``widths[0]``).
        blocks: residual blocks per stage.
        stem_kernel: stem kernel (D, H, W).
        stem_stride: stem stride (D, H, W).
        guide_stage: stage (1-3) after which the primary's last-stage features join each secondary stream.
        attention_reduction: channel reduction of the attention queries and keys.
        dropout: dropout before each linear head.
        num_classes: grades (2: HGG, LGG).
        norm: norm of the backbone.
        primary: the primary modality.

    ``primary_logits(x)`` and ``primary_parameters()`` expose the primary branch alone for the first
    training stage.
    """

    size_multiple = 1  # any size works: the guidance is resized and the heads pool globally

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        stem_kernel: Union[int, Sequence[int]] = (3, 7, 7),
        stem_stride: Union[int, Sequence[int]] = (1, 2, 2),
        guide_stage: int = 3,
        attention_reduction: int = 8,
        dropout: float = 0.3,
        num_classes: int = 2,
        norm: NormType = "batch",
        primary: str = "t1ce",
    ):
        super().__init__()
        widths, blocks = tuple(int(w) for w in widths), tuple(int(n) for n in blocks)
        if len(widths) != 4 or len(blocks) != 4 or min(blocks) < 1:
            raise ValueError("widths and blocks need 4 values, blocks at least 1 each")
        if guide_stage not in (1, 2, 3):
            raise ValueError(f"guide_stage must be 1, 2 or 3, got {guide_stage}")
        stem_kernel, stem_stride = tuple3(stem_kernel, "stem_kernel"), tuple3(stem_stride, "stem_stride")
        self.primary = MODALITIES.index(primary)
        self.secondaries = [i for i in range(len(MODALITIES)) if i != self.primary]
        self.guide_stage = guide_stage
        self.streams = nn.ModuleList(
            MixedConvResNet(widths, blocks, stem_kernel, stem_stride, norm) for _ in MODALITIES
        )
        guided = widths[guide_stage - 1]
        # One guidance projection per modality index (the primary's entry is unused and left out).
        self.guidance = nn.ModuleDict(
            {
                str(i): Convolution(3, guided + widths[-1], guided, kernel_size=1, norm=norm, act="relu")
                for i in self.secondaries
            }
        )
        self.attention = nn.ModuleList(DualAttention(widths[-1], attention_reduction) for _ in MODALITIES)
        self.primary_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(widths[-1], num_classes))
        self.fused_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(len(MODALITIES) * widths[-1], num_classes))

    def _stream(self, index: int, x: torch.Tensor, guide: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Last-stage features of modality ``index``'s stream; ``guide`` (the primary's) joins after guide_stage."""
        stream = self.streams[index]
        y = stream.stem(x[:, index : index + 1])
        for s, stage in enumerate(stream.stages, start=1):
            y = stage(y)
            if guide is not None and s == self.guide_stage:
                up = F.interpolate(guide, size=tuple(y.shape[2:]), mode="trilinear", align_corners=False)
                y = self.guidance[str(index)](torch.cat([y, up], dim=1))
        return y

    def _pooled(self, index: int, features: torch.Tensor) -> torch.Tensor:
        """Dual attention of stream ``index``, then global average pooling: (B, C)."""
        return self.attention[index](features).mean(dim=(2, 3, 4))

    def primary_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Grade logits (B, 2) of the primary (T1ce) branch alone - stream, dual attention, pooling, primary
        head - without running the secondary streams (as ``CMGAux.primary_logits`` of a training forward)."""
        p = self.primary
        return self.primary_head(self._pooled(p, self._stream(p, x)))

    def primary_parameters(self) -> List[nn.Parameter]:
        """The parameters of the primary branch (its stream, its dual attention, the primary head): what the
        first training stage trains before the secondary streams join."""
        p = self.primary
        modules = (self.streams[p], self.attention[p], self.primary_head)
        return [parameter for module in modules for parameter in module.parameters()]

    def forward(
        self, x: torch.Tensor, present: Optional[torch.Tensor] = None
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, CMGAux]]:
        """x: (B, 4, D, H, W) in MODALITIES order; present: optional (B, 4) bool (T1ce must be present)."""
        mask = present_mask(present, x)
        p = self.primary
        guide = self._stream(p, x)
        pooled = [None] * len(MODALITIES)
        pooled[p] = self._pooled(p, guide)
        for i in self.secondaries:
            pooled[i] = self._pooled(i, self._stream(i, x, guide))
        weights = mask.to(x.dtype)
        fused_features = torch.cat([pooled[i] * weights[:, i : i + 1] for i in range(len(MODALITIES))], dim=1)
        fused = self.fused_head(fused_features)
        if self.training:
            return fused, CMGAux(primary_logits=self.primary_head(pooled[p]))
        return fused
