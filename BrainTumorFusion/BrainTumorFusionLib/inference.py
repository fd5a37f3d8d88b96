"""The inference engine: device choice, sliding-window prediction with progress and cancel, mixed precision
on CUDA, and a CPU fallback when the GPU runs out of memory."""

import logging
from contextlib import nullcontext
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from .errors import Cancelled, InputError

log = logging.getLogger(__name__)
OVERLAP = 0.5
Progress = Callable[[float, str], None]  # (fraction done, message)


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
                 progress: Optional[Progress], should_cancel: Optional[Callable[[], bool]]):
        super().__init__()
        self.network, self.present, self.total = network, present, max(total, 1)
        self.progress, self.should_cancel, self.done = progress, should_cancel, 0

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        if self.should_cancel and self.should_cancel():
            raise Cancelled("Cancelled by the user; nothing was written.")
        present = None if self.present is None else self.present.expand(window.shape[0], -1)
        out = self.network(window) if present is None else self.network(window, present)
        self.done += window.shape[0]
        if self.progress:
            self.progress(min(self.done / self.total, 1.0), "Segmenting")
        return out


def predict_regions(network: torch.nn.Module, image: np.ndarray, roi_size: Sequence[int],
                    device: Union[str, torch.device], present: Optional[Sequence[bool]] = None,
                    progress: Optional[Progress] = None, should_cancel: Optional[Callable[[], bool]] = None,
                    overlap: float = OVERLAP) -> np.ndarray:
    """Region probabilities (3, D, H, W) float32 numpy for a (4, D, H, W) normalised image.

    `present` (4 bools) is passed to the network when some modality is missing. On CUDA runs in autocast
    (float16); if the GPU runs out of memory the run is repeated on the CPU with a warning. Raises
    ValueError when `roi_size` is not a multiple of the network's `size_multiple`.
    """
    device = torch.device(device)
    roi = _window_size(network, roi_size)
    try:
        return _predict(network, image, roi, device, present, progress, should_cancel, overlap)
    except torch.OutOfMemoryError:
        if device.type != "cuda":
            raise
        log.warning("The GPU ran out of memory; running on the CPU instead (slower).")
        torch.cuda.empty_cache()
        network.to("cpu")
        return _predict(network, image, roi, torch.device("cpu"), present, progress, should_cancel, overlap)


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
             should_cancel: Optional[Callable[[], bool]], overlap: float) -> np.ndarray:
    network = network.to(device).eval()
    mask = None
    if present is not None and not all(present):
        mask = torch.tensor([list(present)], dtype=torch.bool, device=device)
    # Windows keep the model's patch size (checked against the network's size_multiple); small inputs are padded.
    monitored = _Monitored(network, mask, window_count(image.shape[1:], roi, overlap), progress, should_cancel)
    inputs = torch.from_numpy(np.ascontiguousarray(image[None])).to(device)
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()
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
             present: Optional[Sequence[bool]] = None) -> np.ndarray:
    """Class probabilities (softmax) of a grading network on the whole (4, D, H, W) image resized to `size`."""
    device = torch.device(device)
    inputs = resize_for_classifier(image, size)
    mask = None if present is None or all(present) else torch.tensor([list(present)], dtype=torch.bool)
    network = network.to(device).eval()
    with torch.inference_mode():
        args = (inputs.to(device),) if mask is None else (inputs.to(device), mask.to(device))
        return torch.softmax(network(*args).float(), dim=1)[0].detach().cpu().numpy()
