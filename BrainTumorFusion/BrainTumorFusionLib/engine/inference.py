"""The inference engine: device choice, the precision policy, sliding-window prediction with progress and
cancel, and a CPU fallback when the GPU runs out of memory.

Precision (`precision`): "auto" runs float16 autocast on CUDA, bfloat16 autocast on CPUs with native bfloat16
arithmetic (AVX512-BF16 or AMX on x86, BF16 on Arm; read from the CPU flags, Linux only) for models whose catalogue
entry says bfloat16 keeps their Dice on this kind of CPU (`cpu.probe`, `Model.bf16_keeps_dice`), and float32 elsewhere.
"fp32", "bf16" and "fp16" (CUDA only) force one.

Test-time augmentation (`tta`): "off" runs the network once; "mirror" averages the sigmoid region probabilities of
the image and of its mirror images (nnU-Net's mirroring), each flipped back before averaging: MIRROR_FLIPS passes,
so that many times the network time.
"""

import logging
from contextlib import nullcontext
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from .. import cpu
from ..choices import PRECISIONS, TTA_MODES
from ..errors import Cancelled, InputError
from ..progress import Progress

log = logging.getLogger(__name__)
OVERLAP = 0.5
# Axes of a (4, D, H, W) image flipped in each mirroring pass: the image, then one flip per spatial axis. Every
# combination of the three (8 passes, nnU-Net's) took twice the time for a lower mean Dice with hafb
# (docs/decisions.md).
MIRROR_FLIPS = ((), (1,), (2,), (3,))


def keeps_dice_in_bf16_here(verdicts: dict) -> bool:
    """Whether a catalogue verdict ({kind: "bf16" or "fp32"}, `precision.cpu`) says bfloat16 keeps the model's
    accuracy on this CPU's kind (cpu.BF16_KINDS); a kind it was not measured on runs float32."""
    return verdicts.get(cpu.probe().bf16_kind) == "bf16"


def autocast_dtype(precision: str, device: torch.device, cpu_bf16_allowed: bool = False,
                   cuda_bf16: bool = False) -> Optional[torch.dtype]:
    """THE precision policy (inference and training): the autocast dtype of a run, None = float32.

    "auto" on CUDA: float16, or bfloat16 where `cuda_bf16` asks for it and the GPU has it (training: its range needs
    no gradient scaler); on a CPU: bfloat16 only where `cpu_bf16_allowed` (inference: the model's catalogue verdict
    says it keeps its Dice; training: its recipe trains faster so) and the CPU computes bfloat16 natively, else
    float32. "fp32", "bf16" and "fp16" force one (fp16 on CUDA only)."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise InputError(f"Unknown precision '{precision}'. Use {', '.join(PRECISIONS)}.")
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if cuda_bf16 and torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_bf16_allowed and cpu.probe().bf16_kind else None
    if precision == "fp16" and device.type != "cuda":
        raise InputError("Precision fp16 needs a CUDA GPU (float16 is slow and unsupported by many CPU kernels). "
                         "Use auto, fp32 or bf16.")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse an unknown precision (autocast_dtype's error); warn when bfloat16 is asked for on a CPU that only
    emulates it: hafb took 360 s per case in emulated bfloat16 against 12.5 s in float32 (AVX2-only EPYC)."""
    if autocast_dtype(precision, device) == torch.bfloat16 and device.type == "cpu" and not cpu.probe().bf16_kind:
        log.warning("Precision bf16 on this CPU is emulated (it has no AVX512-BF16 or AMX): it is many times slower "
                    "than fp32 for the same result. Use --precision auto or fp32.")


def flips_of(tta: str) -> tuple[tuple[int, ...], ...]:
    """The image axes flipped in each pass of a run with this test-time augmentation; ((),) = one plain pass."""
    if tta not in TTA_MODES:
        raise InputError(f"Unknown test-time augmentation '{tta}'. Use {' or '.join(TTA_MODES)}.")
    return MIRROR_FLIPS if tta == "mirror" else ((),)


def precision_name(dtype: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def choose_device(requested: Optional[str] = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU. Asking for 'cuda' without a usable GPU is an error."""
    requested = (requested or "auto").lower()
    if requested == "gpu":
        requested = "cuda"
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("Device 'cuda' was requested but PyTorch sees no CUDA GPU here. Choose 'auto' or 'cpu', "
                         "or install a CUDA build of PyTorch (PyTorch extension in Slicer).")
    if requested not in ("cpu", "cuda") and not requested.startswith("cuda:"):
        raise InputError(f"Unknown device '{requested}'. Use auto, cpu or cuda.")
    return torch.device(requested)


def window_count(shape: Sequence[int], roi_size: Sequence[int], overlap: float = OVERLAP) -> int:
    """How many windows sliding_window_inference visits for an input of `shape` (for progress).

    Inputs smaller than the window are padded up to it first, as sliding_window_inference does."""
    shape = [max(s, r) for s, r in zip(shape, roi_size)]
    interval = [r if r == s else max(int(r * (1 - overlap)), 1) for r, s in zip(roi_size, shape)]
    return len(dense_patch_slices(shape, roi_size, interval))


class _Monitored(torch.nn.Module):
    """Wraps the network: passes the modality mask, reports progress and honours cancel between windows."""

    def __init__(self, network: torch.nn.Module, present: Optional[torch.Tensor], total: int,
                 progress: Optional[Progress], should_cancel: Optional[Callable[[], bool]],
                 memory_format: torch.memory_format = torch.contiguous_format):
        super().__init__()
        self.network, self.present, self.total = network, present, max(total, 1)
        self.progress, self.should_cancel, self.done = progress, should_cancel, 0
        self.memory_format = memory_format
        self.message = "Segmenting"  # says which mirroring pass runs, when there are several

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        if self.should_cancel and self.should_cancel():
            raise Cancelled("Cancelled by the user; nothing was written.")
        present = None if self.present is None else self.present.expand(window.shape[0], -1)
        window = window.contiguous(memory_format=self.memory_format)
        out = self.network(window) if present is None else self.network(window, present)
        self.done += window.shape[0]
        if self.progress:
            self.progress(min(self.done / self.total, 1.0), self.message)
        return out


def predict_regions(network: torch.nn.Module, image: np.ndarray, roi_size: Sequence[int],
                    device: Union[str, torch.device], present: Optional[Sequence[bool]] = None,
                    progress: Optional[Progress] = None, should_cancel: Optional[Callable[[], bool]] = None,
                    overlap: float = OVERLAP, precision: str = "auto", cpu_bf16_allowed: bool = False,
                    tta: str = "off") -> np.ndarray:
    """Region probabilities (3, D, H, W) float32 numpy for a (4, D, H, W) normalised image.

    `present` (4 bools) is passed to the network when some modality is missing. Autocast follows `precision`
    (see the module docstring; `cpu_bf16_allowed` is the model's verdict); `tta` "mirror" averages the mirrored passes
    (module docstring), with progress across all passes and cancel between windows. If the GPU runs out of memory
    the run is repeated on the CPU with a warning. Raises ValueError when `roi_size` is not a multiple of the
    network's `size_multiple`.
    """
    device = torch.device(device)
    roi = _window_size(network, roi_size)
    flips = flips_of(tta)
    try:
        return _predict(network, image, roi, device, present, progress, should_cancel, overlap,
                        autocast_dtype(precision, device, cpu_bf16_allowed), flips)
    except torch.OutOfMemoryError:
        if device.type != "cuda":
            raise
        log.warning("The GPU ran out of memory; running on the CPU instead (slower).")
        torch.cuda.empty_cache()
        network.to("cpu")
        cpu = torch.device("cpu")
        return _predict(network, image, roi, cpu, present, progress, should_cancel, overlap,
                        autocast_dtype("auto" if precision == "fp16" else precision, cpu, cpu_bf16_allowed), flips)


def covering_window(shape: Sequence[int], patch_size: Sequence[int], network: torch.nn.Module) -> Tuple[int, ...]:
    """One window that covers an image of `shape`: at least the patch size, each side rounded up to the
    network's `size_multiple`. For fully convolutional models whose catalogue entry says "window": "whole": one
    forward pass instead of overlapping patches (hafb: 3.7x less time on the 2 mm brain crop, Dice kept; see
    docs/decisions.md)."""
    multiple = int(getattr(network, "size_multiple", 1))
    return tuple(-(-max(int(s), int(p)) // multiple) * multiple for s, p in zip(shape, patch_size))


def _window_size(network: torch.nn.Module, roi_size: Sequence[int]) -> Tuple[int, ...]:
    """The window size as ints; ValueError unless each side is a multiple of the network's `size_multiple`.

    Networks that pad internally would run anyway, but on padding the windows were never meant to hold: the
    roi is the patch size the model was trained with, so a wrong one is a catalogue error to report."""
    roi = tuple(int(r) for r in roi_size)
    multiple = int(getattr(network, "size_multiple", 1))
    if any(r % multiple for r in roi):
        raise ValueError(f"Window size {roi} does not suit network {type(network).__name__}: its input sizes must "
                         f"be multiples of {multiple}. Fix the model's patch_size in its catalogue entry.")
    return roi


def _predict(network: torch.nn.Module, image: np.ndarray, roi: Tuple[int, ...], device: torch.device,
             present: Optional[Sequence[bool]], progress: Optional[Progress],
             should_cancel: Optional[Callable[[], bool]], overlap: float,
             dtype: Optional[torch.dtype], flips: Sequence[Tuple[int, ...]]) -> np.ndarray:
    # Networks that say so run bf16 on the CPU in the channels-last-3d layout (oneDNN's faster kernels there).
    layout = torch.contiguous_format
    if device.type == "cpu" and dtype == torch.bfloat16 and getattr(network, "bf16_channels_last", False):
        layout = torch.channels_last_3d
    network = network.to(device, memory_format=layout).eval()
    mask = None
    if present is not None and not all(present):
        mask = torch.tensor([list(present)], dtype=torch.bool, device=device)
    # Windows keep the model's patch size (checked against the network's size_multiple); small inputs are padded.
    windows = window_count(image.shape[1:], roi, overlap)
    monitored = _Monitored(network, mask, windows * len(flips), progress, should_cancel, layout)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    total = None
    for index, axes in enumerate(flips):
        if len(flips) > 1:
            monitored.message = f"Segmenting, mirroring pass {index + 1} of {len(flips)}"
        probabilities = _sliding_window(monitored, image, axes, roi, device, overlap, autocast)
        # np.flip is a view: the pass is flipped back and added without another full-size copy
        restored = np.flip(probabilities, axes)
        if total is None:  # the first pass is the plain image: its output becomes the sum, uncopied
            total = np.ascontiguousarray(restored)
        else:
            total += restored
        del probabilities, restored  # only the running sum stays alive during the next pass
    if len(flips) > 1:
        total /= len(flips)
    return total


def _sliding_window(monitored: _Monitored, image: np.ndarray, axes: Tuple[int, ...], roi: Tuple[int, ...],
                    device: torch.device, overlap: float, autocast) -> np.ndarray:
    """Sigmoid region probabilities (3, D, H, W) of the image flipped along `axes`, on the flipped grid."""
    inputs = torch.from_numpy(np.ascontiguousarray(np.flip(image, axes)[None])).to(device)
    with torch.inference_mode(), autocast:
        logits = sliding_window_inference(inputs, roi, 1, monitored, overlap=overlap, mode="gaussian",
                                          sw_device=device, device="cpu")
    return torch.sigmoid(logits[0].float()).numpy()


def resize_for_classifier(image: np.ndarray, size: Sequence[int]) -> torch.Tensor:
    """(1, C, *size) float32 tensor: a whole (C, D, H, W) image resized (trilinear) to a grading network's input
    size. Training resizes its grading inputs with this function too, so both see the same input."""
    inputs = torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32))
    return torch.nn.functional.interpolate(inputs, size=tuple(int(s) for s in size), mode="trilinear",
                                           align_corners=False)


def classify(network: torch.nn.Module, image: np.ndarray, size: Sequence[int], device: Union[str, torch.device],
             present: Optional[Sequence[bool]] = None, precision: str = "auto", cpu_bf16_allowed: bool = False) -> np.ndarray:
    """Class probabilities (softmax) of a grading network on the whole (4, D, H, W) image resized to `size`."""
    device = torch.device(device)
    inputs = resize_for_classifier(image, size)
    mask = None if present is None or all(present) else torch.tensor([list(present)], dtype=torch.bool)
    network = network.to(device).eval()
    dtype = autocast_dtype(precision, device, cpu_bf16_allowed)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
        args = (inputs.to(device),) if mask is None else (inputs.to(device), mask.to(device))
        return torch.softmax(network(*args).float(), dim=1)[0].detach().cpu().numpy()
