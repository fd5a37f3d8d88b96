"""The model "auto": for the modalities a case has, the most accurate measured choice of the catalogue's "auto"
table that runs within the time budget on this device.

The table (models.json, field "auto", written by `python -m Training choose-auto`) holds single models and
ensembles with their validation Dice and CPU seconds per case. A choice counts only while its members are in the
catalogue with the weights it was measured with; it can run on a case when each member either has every modality
it needs or handles missing ones; on a CPU it must also stay within the table's `cpu_seconds_limit` (on a GPU
every choice fits). A choice whose whole tumor collapsed on a validation case (Dice below WORST_WT_FLOOR) is
taken only when no other runs, and the reason says so. The most accurate (mean Dice of WT, TC, ET) is taken, the
faster one on a tie.
"""

from ..choices import AUTO
from ..errors import InputError, ModelError
from ..modalities import MODALITIES, display, how_to_give
from .catalogue import Catalogue, MeasuredChoice
from .postprocessing import Cleanup

WORST_WT_FLOOR = 0.5  # issue: "no model below WT 0.5 on any case"
COLLAPSE = (f"every choice that runs on these modalities scored a whole-tumor Dice below {WORST_WT_FLOOR} on some "
            "validation case: check the result")


def collapse_warning(choice: MeasuredChoice) -> list[str]:
    """The warning a result of this choice carries when it collapsed on a validation case."""
    if choice.worst_wt >= WORST_WT_FLOOR:
        return []
    return [f"Model '{describe(choice)}' (chosen by {AUTO}: nothing steadier runs on these modalities) scored a "
            f"whole-tumor Dice of {choice.worst_wt:.2f} on one validation case: check the result."]


def is_current(catalogue: Catalogue, choice: MeasuredChoice) -> bool:
    """Whether every member of the choice is in the catalogue with the weights it was measured with."""
    def current(name: str, sha256: str) -> bool:
        entry = catalogue.entries.get(name)
        return entry is not None and entry.task == "segmentation" and entry.sha256 == sha256

    return all(current(*member) for member in choice.members)


def measured_cleanup(catalogue: Catalogue, names: list[str]) -> Cleanup:
    """The clean-up measured for this model or ensemble (its current row of the table), whether auto chose it or
    the user named it; none where the table has no such row."""
    for choice in catalogue.auto.choices:
        if sorted(choice.member_names) == sorted(names) and is_current(catalogue, choice):
            return choice.cleanup
    return Cleanup()


def usable_choices(catalogue: Catalogue) -> list[MeasuredChoice]:
    """Choices of the table whose members are in the catalogue with the weights they were measured with; a
    ModelError when there are none."""
    usable = [choice for choice in catalogue.auto.choices if is_current(catalogue, choice)]
    if not usable:
        raise ModelError(f"The model catalogue has no measured '{AUTO}' choice for its current weights. Choose a "
                         "model by name (the models command lists them), or measure the table again with "
                         "`python -m Training choose-auto`.")
    return usable


def runs_on(catalogue: Catalogue, choice: MeasuredChoice, present: tuple[bool, ...]) -> bool:
    have = {m for m, p in zip(MODALITIES, present) if p}
    return all(entry.handles_missing_modalities or set(entry.modalities) <= have
               for entry in (catalogue.entries[name] for name in choice.member_names))


def choose(catalogue: Catalogue, present: tuple[bool, ...], on_cpu: bool) -> tuple[MeasuredChoice, str]:
    """(The choice for a case with these modalities present, the reason in words). Raises ModelError when the
    catalogue has no usable table, InputError when no choice runs on these modalities."""
    table = catalogue.auto
    runnable = [choice for choice in usable_choices(catalogue) if runs_on(catalogue, choice, present)]
    have = [m for m, p in zip(MODALITIES, present) if p]
    if not runnable:
        missing = [m for m in MODALITIES if m not in have]
        raise InputError(f"No model of the '{AUTO}' choice runs with only {display(have)} ({display(missing)} "
                         f"missing): {how_to_give(missing)}; or choose a model by name.")
    steady = [choice for choice in runnable if choice.worst_wt >= WORST_WT_FLOOR]
    caveat = "" if steady else "; " + COLLAPSE
    runnable = steady or runnable
    fitting = [choice for choice in runnable if not on_cpu or choice.cpu_seconds <= table.cpu_seconds_limit]
    if not fitting:  # nothing is fast enough: the fastest that runs
        best = min(runnable, key=lambda choice: choice.cpu_seconds)
        return best, (f"{describe(best)}: the fastest of the {len(runnable)} measured choices that run on "
                      f"{display(have)} (none stays within {table.cpu_seconds_limit:g} s per case on a CPU; "
                      f"{best.cpu_seconds:.1f} s measured){caveat}")
    best = max(fitting, key=lambda choice: (round(choice.mean_dice, 4), -choice.cpu_seconds))
    dice = ", ".join(f"{region} {value:.3f}" for region, value in best.dice.items())
    budget = (f"within {table.cpu_seconds_limit:g} s per case on a CPU ({best.cpu_seconds:.1f} s measured"
              f"{' on ' + table.hardware if table.hardware else ''})" if on_cpu
              else "on the GPU, where every measured choice fits the time budget")
    return best, (f"{describe(best)}: the most accurate of the {len(fitting)} measured choices that run on "
                  f"{display(have)} {budget}; validation Dice {dice}{caveat}")


def describe(choice: MeasuredChoice) -> str:
    return f"{choice.model} ({' + '.join(choice.member_names)})" if len(choice.members) > 1 else choice.model
