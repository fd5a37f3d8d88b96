"""choose-auto's bookkeeping: which measured combinations auto can take (those get a clean-up), and the seconds
kept from the table that timed them when Dice and clean-up are re-measured on another machine."""

from dataclasses import replace

import pytest

from BrainTumorFusionLib import cpu
from BrainTumorFusionLib.cpu import CpuInfo
from BrainTumorFusionLib.engine.catalogue import AutoTable, Catalogue
from Training.choose_auto import recorded_seconds, takeable


@pytest.fixture(scope="module")
def shipped():
    return Catalogue.load()


def test_seconds_are_kept_only_from_a_table_that_covers_every_combination(shipped):
    seconds = recorded_seconds(shipped)
    assert len(seconds) == 2 ** len(shipped.names("segmentation")) - 1
    hafb = next(choice for choice in shipped.auto.choices if choice.member_names == ["hafb"])
    assert seconds[frozenset(["hafb"])] == hafb.cpu_seconds
    partial = Catalogue(shipped.entries.values(), replace(shipped.auto, choices=shipped.auto.choices[1:]))
    with pytest.raises(SystemExit, match="--keep-seconds needs the table to hold all"):
        recorded_seconds(partial)
    stale = Catalogue(shipped.entries.values(), AutoTable(choices=tuple(
        replace(choice, members=tuple((name, "0" * 64) for name, _ in choice.members))
        for choice in shipped.auto.choices)))
    with pytest.raises(SystemExit, match="holds 0"):
        recorded_seconds(stale)


def test_a_retrained_model_keeps_the_seconds_of_the_table_that_timed_it_when_it_runs_alike(shipped):
    retrained = replace(shipped.entries["missu"], sha256="1" * 64)  # new weights, same network and settings
    current = Catalogue([*(e for n, e in shipped.entries.items() if n != "missu"), retrained], shipped.auto)
    with pytest.raises(SystemExit, match="--timed-catalogue"):
        recorded_seconds(current)  # its own table was timed with the old weights
    assert recorded_seconds(current, timed=shipped) == recorded_seconds(shipped)
    wider = replace(retrained, config={**retrained.config, "widths": [16, 32, 64, 128]})
    other = Catalogue([*(e for n, e in shipped.entries.items() if n != "missu"), wider], shipped.auto)
    with pytest.raises(SystemExit, match="holds 15"):  # only the combinations without missu
        recorded_seconds(other, timed=shipped)


def test_a_retrained_model_whose_bfloat16_verdict_here_changed_does_not_keep_its_seconds(shipped, monkeypatch):
    monkeypatch.setattr(cpu, "probe", lambda: CpuInfo("test CPU", frozenset({"avx512_bf16"})))  # the table's kind
    assert shipped.entries["missu"].details["precision"]["cpu"]["avx512_bf16"] == "bf16"
    entry = shipped.entries["missu"]
    for verdicts, kept in (({"avx512_bf16": "bf16"}, True), ({"avx512_bf16": "bf16", "amx_bf16": "fp32"}, True),
                           ({"avx512_bf16": "fp32"}, False), ({"amx_bf16": "bf16"}, False)):
        retrained = replace(entry, sha256="1" * 64, details={**entry.details, "precision": {"cpu": verdicts}})
        current = Catalogue([*(e for n, e in shipped.entries.items() if n != "missu"), retrained], shipped.auto)
        if kept:
            assert recorded_seconds(current, timed=shipped) == recorded_seconds(shipped), verdicts
        else:
            with pytest.raises(SystemExit, match="holds 15"):  # float32 here: missu's combinations run slower
                recorded_seconds(current, timed=shipped)


def test_the_takeable_combinations_are_what_auto_picks_for_some_modalities_on_a_cpu_or_a_gpu(shipped):
    def row(members, mean, seconds, worst=0.8):
        return {"members": members, "dice": {"WT": mean, "TC": mean, "ET": mean}, "cpu_seconds": seconds,
                "worst_wt": worst}

    rows = {0: row(["hafb"], 0.70, 2.0), 1: row(["missu", "segresnet"], 0.75, 4.0),
            2: row(["hafb", "missu", "segresnet"], 0.80, 12.0), 3: row(["segresnet"], 0.60, 1.0),
            4: row(["hafb", "missu"], 0.90, 3.0, worst=0.3)}
    # 4 modalities on a CPU: missu+segresnet (hafb+missu collapsed, the triple is too slow); on a GPU: the triple;
    # fewer: hafb, the only model handling missing modalities. segresnet alone is never the best.
    assert sorted(takeable(rows, shipped)) == [0, 1, 2]
