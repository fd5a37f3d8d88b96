import numpy as np
import pytest
import torch

from BrainTumorFusionLib import cpu as cpu_module
from BrainTumorFusionLib import networks
from BrainTumorFusionLib.cpu import CpuInfo, parse_cpuinfo
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.engine.inference import _window_size, choose_device, classify, predict_regions, window_count
from BrainTumorFusionLib.errors import Cancelled, InputError
from Testing.plumbing import ConstantGrader, IntensityNet


class CountingNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls, self.presents = 0, []

    def forward(self, x, present=None):
        self.calls += x.shape[0]
        self.presents.append(present)
        return torch.zeros(x.shape[0], 3, *x.shape[2:])


def test_device_choice():
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert choose_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            choose_device("cuda")
    with pytest.raises(InputError, match="Unknown device"):
        choose_device("tpu")


@pytest.mark.parametrize("shape, roi", [((40, 50, 60), (32, 32, 32)), ((20, 20, 20), (32, 32, 32)),
                                        ((65, 33, 32), (32, 32, 32))])
def test_progress_counts_every_window(shape, roi):
    net, reports = CountingNet(), []
    image = np.zeros((4,) + shape, np.float32)
    out = predict_regions(net, image, roi, "cpu", progress=lambda f, m: reports.append(f))
    assert out.shape == (3,) + shape and np.allclose(out, 0.5)
    assert net.calls == window_count(shape, roi) == len(reports)
    assert reports[-1] == pytest.approx(1.0)


def test_small_inputs_are_padded_to_the_window_not_the_window_shrunk():
    net = CountingNet()
    shapes = []
    net.forward = lambda x, present=None: shapes.append(tuple(x.shape[2:])) or torch.zeros(x.shape[0], 3, *x.shape[2:])
    out = predict_regions(net, np.zeros((4, 20, 30, 40), np.float32), (32, 32, 32), "cpu")
    assert out.shape == (3, 20, 30, 40) and set(shapes) == {(32, 32, 32)}


def test_window_not_a_multiple_of_the_networks_size_multiple_is_refused():
    net = CountingNet()
    net.size_multiple = 16
    image = np.zeros((4, 40, 40, 40), np.float32)
    with pytest.raises(ValueError, match=r"Window size \(24, 32, 32\) .* CountingNet.* multiples of 16"):
        predict_regions(net, image, (24, 32, 32), "cpu")
    assert net.calls == 0  # refused before any window ran
    assert predict_regions(net, image, (32, 32, 16), "cpu").shape == (3, 40, 40, 40)


def test_every_shipped_patch_size_suits_its_network():
    catalogue = Catalogue.load()
    for entry in catalogue.entries.values():
        network = networks.build(entry.network, **entry.config)  # no weights needed for the size check
        assert _window_size(network, entry.patch_size) == tuple(entry.patch_size), entry.name


def test_cancel_stops_between_windows():
    net = CountingNet()
    with pytest.raises(Cancelled):
        predict_regions(net, np.zeros((4, 64, 64, 64), np.float32), (32, 32, 32), "cpu",
                        should_cancel=lambda: net.calls >= 2)
    assert net.calls == 2


def test_modality_mask_passed_only_when_something_is_missing():
    net = CountingNet()
    predict_regions(net, np.zeros((4, 16, 16, 16), np.float32), (16, 16, 16), "cpu")
    predict_regions(net, np.zeros((4, 16, 16, 16), np.float32), (16, 16, 16), "cpu",
                    present=(True, False, True, True))
    assert net.presents[0] is None
    assert net.presents[1].tolist() == [[True, False, True, True]]


def test_sliding_window_equals_whole_image_for_a_pointwise_net():
    image = np.random.default_rng(0).normal(size=(4, 40, 36, 30)).astype(np.float32)
    net = IntensityNet().eval()
    windowed = predict_regions(net, image, (16, 16, 16), "cpu")
    with torch.no_grad():
        whole = torch.sigmoid(net(torch.from_numpy(image[None])))[0].numpy()
    np.testing.assert_allclose(windowed, whole, atol=1e-5)


def test_classify_returns_probabilities():
    probabilities = classify(ConstantGrader(), np.zeros((4, 20, 30, 40), np.float32), (16, 16, 16), "cpu")
    assert probabilities.shape == (2,) and probabilities.sum() == pytest.approx(1.0)
    assert probabilities[0] == pytest.approx(torch.softmax(torch.tensor([1.0, -1.0]), 0)[0].item())


class DtypeNet(torch.nn.Module):
    """Records the dtype its convolution computes in (what autocast chose)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(4, 3, 1)
        self.dtypes = []

    def forward(self, x, present=None):
        out = self.conv(x)
        self.dtypes.append(out.dtype)
        return out


def on_cpu(monkeypatch, *flags):
    """This test's CPU: one with these /proc/cpuinfo flags (cpu.probe is the library's one seam for it)."""
    monkeypatch.setattr(cpu_module, "probe", lambda: CpuInfo("test CPU", frozenset(flags)))


def test_precision_policy_on_the_cpu(monkeypatch):
    from BrainTumorFusionLib.engine import inference

    cpu = torch.device("cpu")
    on_cpu(monkeypatch, "avx512_bf16")
    assert inference.autocast_dtype("auto", cpu, cpu_bf16_allowed=True) == torch.bfloat16
    assert inference.autocast_dtype("auto", cpu, cpu_bf16_allowed=False) is None  # the model's verdict says fp32
    assert inference.autocast_dtype("fp32", cpu, cpu_bf16_allowed=True) is None
    assert inference.autocast_dtype("bf16", cpu, cpu_bf16_allowed=False) == torch.bfloat16  # asked for: given
    on_cpu(monkeypatch, "avx2")
    assert inference.autocast_dtype("auto", cpu, cpu_bf16_allowed=True) is None  # emulated bf16 is slower
    with pytest.raises(InputError, match="fp16 needs a CUDA GPU"):
        inference.autocast_dtype("fp16", cpu)
    with pytest.raises(InputError, match="Unknown precision 'half'"):
        inference.autocast_dtype("half", cpu)


def test_bfloat16_asked_for_on_a_cpu_that_emulates_it_is_warned_about(monkeypatch, caplog):
    from BrainTumorFusionLib.engine import inference

    cpu = torch.device("cpu")
    on_cpu(monkeypatch, "avx2")
    with caplog.at_level("WARNING", logger=inference.__name__):
        inference.check_precision("auto", cpu)
        inference.check_precision("fp32", cpu)
        assert not caplog.records
        inference.check_precision("bf16", cpu)
    assert "emulated" in caplog.text and "--precision auto or fp32" in caplog.text
    on_cpu(monkeypatch, "amx_bf16")
    caplog.clear()
    inference.check_precision("bf16", cpu)
    assert not caplog.records
    with pytest.raises(InputError, match="Unknown precision 'half'"):
        inference.check_precision("half", cpu)


def test_predict_runs_in_the_chosen_precision_and_returns_float32():
    net, image = DtypeNet(), np.random.default_rng(0).normal(size=(4, 32, 32, 32)).astype(np.float32)
    fp32 = predict_regions(net, image, (32, 32, 32), "cpu", precision="fp32")
    bf16 = predict_regions(net, image, (32, 32, 32), "cpu", precision="bf16")
    assert net.dtypes == [torch.float32, torch.bfloat16]
    assert fp32.dtype == bf16.dtype == np.float32
    assert np.abs(fp32 - bf16).max() < 0.02 and not np.array_equal(fp32, bf16)


def test_the_cpus_bfloat16_kind_and_name_are_read_from_cpuinfo():
    def kind(text):
        return parse_cpuinfo(text).bf16_kind

    assert kind("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n") == "avx512_bf16"
    # A Xeon with AMX has AVX512-BF16 too; its kernels are AMX's.
    assert kind("processor\t: 0\nflags\t\t: fpu avx512_bf16 amx_bf16 amx_tile\n") == "amx_bf16"
    assert kind("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n") == "bf16"  # Arm
    assert kind("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n") is None
    assert parse_cpuinfo("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t: fpu\n").model_name == "AMD EPYC 9B14"


def test_a_bfloat16_verdict_holds_only_on_the_cpu_kind_it_was_measured_on(monkeypatch):
    from BrainTumorFusionLib.engine import inference

    verdicts = {"avx512_bf16": "bf16", "amx_bf16": "fp32"}  # transfuse's first weights
    for flags, keeps in ((("avx512_bf16",), True), (("avx512_bf16", "amx_bf16"), False), (("bf16",), False),
                         ((), False)):
        on_cpu(monkeypatch, *flags)
        assert inference.keeps_dice_in_bf16_here(verdicts) is keeps, flags


def test_a_whole_window_model_runs_one_window_over_the_whole_crop():
    from BrainTumorFusionLib.engine.inference import covering_window
    from BrainTumorFusionLib.engine.pipeline import Model
    net = CountingNet()
    net.size_multiple = 16
    assert covering_window((71, 92, 68), (64, 64, 64), net) == (80, 96, 80)
    assert covering_window((20, 70, 30), (64, 64, 64), net) == (64, 80, 64)  # never smaller than the patch
    image = np.zeros((4, 71, 92, 68), np.float32)
    predict_regions(net, image, covering_window(image.shape[1:], (64, 64, 64), net), "cpu")
    assert net.calls == 1
    patches = CountingNet()
    predict_regions(patches, image, (64, 64, 64), "cpu")
    assert patches.calls == 8
    assert Model("m", net).whole_window is False  # patch windows unless the catalogue says "whole"


def test_the_catalogue_window_field_reaches_the_model(tmp_path):
    from BrainTumorFusionLib.engine.pipeline import Model
    from Testing.plumbing import write_catalogue
    for window, expected in (("whole", True), ("patch", False), (None, False)):
        fields = {"window": window} if window else {}
        path = write_catalogue(tmp_path, "intensity", IntensityNet().state_dict(), **fields)
        entry = Catalogue.load([path]).entry("intensity")
        assert entry.whole_window is expected and Model.from_entry(entry, "cpu").whole_window is expected


def test_networks_that_ask_for_it_get_channels_last_windows_in_cpu_bf16_only():
    class LayoutNet(CountingNet):
        bf16_channels_last = True

        def __init__(self):
            super().__init__()
            self.layouts = []

        def forward(self, x, present=None):
            self.layouts.append(x.is_contiguous(memory_format=torch.channels_last_3d))
            return super().forward(x, present)

    image = np.random.default_rng(0).normal(size=(4, 20, 20, 20)).astype(np.float32)
    for precision, expected in (("bf16", True), ("fp32", False)):
        net = LayoutNet()
        predict_regions(net, image, (16, 16, 16), "cpu", precision=precision)
        assert net.layouts and all(layout is expected for layout in net.layouts), precision


class FixedLogitsNet(torch.nn.Module):
    """Gives the same logits whatever its input: an image-position-dependent (not flip-equivariant) network."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.calls = logits, 0

    def forward(self, x, present=None):
        self.calls += x.shape[0]
        return self.logits.expand(x.shape[0], -1, -1, -1, -1).clone()  # the caller may change its output in place


def test_mirroring_leaves_a_flip_equivariant_network_unchanged():
    image = np.random.default_rng(0).normal(size=(4, 20, 24, 28)).astype(np.float32)
    net = IntensityNet().eval()  # voxel-wise: mirroring the input mirrors its output
    plain = predict_regions(net, image, (16, 16, 16), "cpu", tta="off")
    mirrored = predict_regions(net, image, (16, 16, 16), "cpu", tta="mirror")
    assert mirrored.dtype == np.float32 and mirrored.shape == plain.shape
    np.testing.assert_allclose(mirrored, plain, atol=1e-6)


def test_mirroring_averages_the_passes_each_flipped_back():
    from BrainTumorFusionLib.engine.inference import MIRROR_FLIPS

    shape = (8, 12, 16)
    logits = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 3) + shape).astype(np.float32))
    net = FixedLogitsNet(logits)
    image = np.zeros((4,) + shape, np.float32)
    mirrored = predict_regions(net, image, shape, "cpu", tta="mirror")  # one window per pass: no blending
    probabilities = torch.sigmoid(logits[0]).numpy()
    expected = np.mean([np.flip(probabilities, axes) for axes in MIRROR_FLIPS], axis=0)
    np.testing.assert_allclose(mirrored, expected, atol=1e-6)
    assert not np.allclose(mirrored, probabilities)  # the mirrored passes did count
    assert net.calls == len(MIRROR_FLIPS) and set(MIRROR_FLIPS[0]) == set()  # the plain image is one of them


def test_mirroring_reports_progress_over_all_passes_and_cancels_between_them():
    from BrainTumorFusionLib.engine.inference import MIRROR_FLIPS

    image, roi = np.zeros((4, 40, 40, 40), np.float32), (32, 32, 32)
    windows, reports = window_count(image.shape[1:], roi), []
    net = CountingNet()
    predict_regions(net, image, roi, "cpu", tta="mirror", progress=lambda f, m: reports.append((f, m)))
    fractions = [fraction for fraction, _ in reports]
    assert net.calls == len(reports) == windows * len(MIRROR_FLIPS)
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert reports[-1][1] == f"Segmenting, mirroring pass {len(MIRROR_FLIPS)} of {len(MIRROR_FLIPS)}"
    net = CountingNet()
    with pytest.raises(Cancelled):
        predict_regions(net, image, roi, "cpu", tta="mirror", should_cancel=lambda: net.calls >= windows)
    assert net.calls == windows  # the first pass ran whole, the second never started


def test_an_unknown_test_time_augmentation_is_refused_before_any_window():
    net = CountingNet()
    with pytest.raises(InputError, match="Unknown test-time augmentation 'sideways'. Use off or mirror."):
        predict_regions(net, np.zeros((4, 16, 16, 16), np.float32), (16, 16, 16), "cpu", tta="sideways")
    assert net.calls == 0
