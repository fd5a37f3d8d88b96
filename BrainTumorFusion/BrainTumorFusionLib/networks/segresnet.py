"""MONAI SegResNet (Myronenko, BraTS 2018) as the project's baseline, behind the zoo's interface."""

from typing import Optional, Tuple, Union

import torch
from monai.networks.nets import SegResNet


class SegResNetBaseline(SegResNet):
    """SegResNet with 4 input channels (MODALITIES order) and the 3 region outputs (WT, TC, ET).

    Same state_dict as MONAI's SegResNet. `present` is accepted and ignored (absent modalities are zero
    channels). Training mode returns (logits, None): no auxiliary outputs.
    """

    def __init__(self, init_filters: int = 16, **config):
        super().__init__(spatial_dims=3, in_channels=4, out_channels=3, init_filters=init_filters, **config)
        # Every down level but the first halves the size and the decoder adds skips back without padding,
        # so input sizes must be multiples of this (8 with the default blocks_down).
        self.size_multiple = 2 ** (len(self.blocks_down) - 1)

    def forward(
        self, x: torch.Tensor, present: Optional[torch.Tensor] = None
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, None]]:
        logits = super().forward(x)
        return (logits, None) if self.training else logits
