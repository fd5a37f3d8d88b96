"""Training data: case discovery with label files, source groups, the recorded split, and the prepared cache.

Cases are found by the library's file adapter (`cases.find_cases`: BraTS 2018-2021 `_t1/_t1ce/_t2/_flair`
and 2023 `-t1n/-t1c/-t2w/-t2f` naming); the label map is the file of the case folder whose name ends in
`_seg` / `-seg`. Images are prepared by the library's own `preprocessing.prepare` (brain crop, resampling to
the model spacing, z-score), i.e. exactly what inference does, and the label map is brought onto the same grid
in physical space (nearest neighbour) and converted to the three nested regions (WT, TC, ET).

Each prepared case is cached as `<cache>/<spacing tag>/<case id>.npz` (compressed): `image` float16
(4, D, H, W), `regions` uint8 (3, D, H, W), `present` (4,) bool, `ijk_to_ras` (4, 4) of the model grid and
`source` (the input files' sizes and modification times, to notice changed inputs).
"""

import csv
import json
import logging
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from BrainTumorFusionLib.engine.postprocessing import brats_labels
from BrainTumorFusionLib.engine.preprocessing import prepare
from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.files.cases import find_cases
from BrainTumorFusionLib.files.file_io import read_case, strip_extension, write_atomically
from BrainTumorFusionLib.preparation.geometry import ijk_to_ras_of, resample_onto, same_grid

log = logging.getLogger(__name__)

REGIONS = ("WT", "TC", "ET")
# BraTS label values making up each nested region (3 is mapped to 4 first: BraTS 2023+ enhancing tumor).
REGION_LABELS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
GROUPS_FILE = "cases.csv"
GROUP_COLUMNS = ("source_group", "group", "site", "institution")
_TOKEN = re.compile(r"[_\-]")


# ---------------------------------------------------------------------------------------------- discovery


def labels_file(folder):
    """The label map of a case folder: the image file whose last name token is `seg`, or None."""
    found = [path for path in sorted(Path(folder).iterdir())
             if path.is_file() and (stem := strip_extension(path.name)) is not None
             and _TOKEN.split(stem)[-1].lower() == "seg"]
    if len(found) > 1:
        raise InputError(f"Case folder {folder} holds several label maps ({', '.join(p.name for p in found)}); "
                         "keep one `_seg` file per case.")
    return found[0] if found else None


def discover(input_dir, require_labels=True):
    """{case id: CaseFiles} of every case folder under input_dir (sorted); cases without a label map are
    skipped with a warning when labels are required."""
    cases = {}
    for case_files in find_cases(input_dir):
        folder = next(iter(case_files.files.values())).parent
        if require_labels and labels_file(folder) is None:
            log.warning("Case %s has no label map (`_seg` file); it is left out.", case_files.case_id)
            continue
        cases[case_files.case_id] = case_files
    if not cases:
        raise InputError(f"No case with a label map found in {input_dir}.")
    return cases


def case_folder(case_files):
    return next(iter(case_files.files.values())).parent


# ---------------------------------------------------------------------------------------------- groups


def group_from_id(case_id):
    """Source group from a BraTS case id when no table says it.

    `Brats18_CBICA_ABM_1` -> `CBICA`, `Brats18_2013_11_1` -> `2013`, `Brats18_TCIA01_378_1` -> `TCIA01`
    (BraTS 2018/2019 name the contributing institution); `BraTS-GLI-00000-000` -> `BraTS-GLI` (2023: the
    sub-challenge); anything else (`BraTS2021_00006`, `BraTS20_Training_001`) -> its first token.
    """
    tokens = _TOKEN.split(case_id)
    if len(tokens) == 4 and re.fullmatch(r"(?i)brats\d\d", tokens[0]):
        return tokens[1]
    if len(tokens) >= 3 and tokens[0].lower() == "brats" and "-" in case_id:
        return f"{tokens[0]}-{tokens[1]}"
    return tokens[0]


def read_groups_table(path):
    """{case id: group} from a CSV with a `case_id` column and a group column (source_group, group, site)."""
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        columns = reader.fieldnames or []
        column = next((c for c in GROUP_COLUMNS if c in columns), None)
        if "case_id" not in columns or column is None:
            raise InputError(f"{path} needs a `case_id` column and one of {', '.join(GROUP_COLUMNS)}.")
        return {row["case_id"]: row[column] for row in reader if row.get(column)}


def source_groups(case_ids, input_dir=None, table=None):
    """{case id: group}: from `table` (or `<input_dir>/cases.csv` when present), else from the case id."""
    table = Path(table) if table else (Path(input_dir) / GROUPS_FILE if input_dir else None)
    known = read_groups_table(table) if table and table.is_file() else {}
    return {case_id: known.get(case_id) or group_from_id(case_id) for case_id in case_ids}


# ---------------------------------------------------------------------------------------------- split


def grouped_order(groups, rng):
    """Case ids group by group (groups sorted by name), shuffled within their group by rng: the order both splits
    deal from, so that every group contributes its share to each side."""
    ordered = []
    for group in sorted(set(groups.values())):
        members = sorted(case_id for case_id, g in groups.items() if g == group)
        ordered += [members[i] for i in rng.permutation(len(members))]
    return ordered


def split_record(groups, validation, seed, **how):
    validation_set = set(validation)
    return {
        "seed": int(seed),
        **how,
        "stratified_by": "source_group",
        "train": sorted(c for c in groups if c not in validation_set),
        "validation": sorted(validation_set),
        "groups": {c: groups[c] for c in sorted(groups)},
    }


def make_split(groups, val_fraction=0.2, seed=0):
    """Deterministic train/validation split stratified by group.

    groups: {case id: group}. Cases are ordered by grouped_order and every 1/val_fraction-th position, from a
    seeded random offset, goes to validation. So the validation set has round(N * val_fraction) cases (+-1), every
    group contributes its share (+-1), and the result depends only on the case ids, their groups and the seed (not
    on listing order). At least one case stays on each side when there are two or more.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    ordered = grouped_order(groups, rng)
    offset = rng.random()
    validation = [case_id for i, case_id in enumerate(ordered)
                  if np.floor((i + 1) * val_fraction + offset) > np.floor(i * val_fraction + offset)]
    if len(ordered) >= 2 and not validation:
        validation = [ordered[-1]]
    if len(ordered) >= 2 and len(validation) == len(ordered):
        validation = validation[:-1]
    return split_record(groups, validation, seed, val_fraction=float(val_fraction))


def make_fold_split(groups, folds, fold, seed=0):
    """Fold `fold` (0-based) of a `folds`-fold cross-validation, stratified by group: grouped_order dealt round-robin
    to the folds, so that the folds of one seed partition the cases, differ in size by at most one, and each takes
    its share (+-1) of every group. Validation is fold `fold`, training the others."""
    if not 2 <= folds <= len(groups):
        raise InputError(f"Cross-validation needs 2 to {len(groups)} folds for {len(groups)} cases, got {folds}.")
    if not 0 <= fold < folds:
        raise InputError(f"--fold must lie in 0..{folds - 1} for {folds} folds, got {fold}.")
    ordered = grouped_order(groups, np.random.default_rng(seed))
    return split_record(groups, ordered[fold::folds], seed, folds=int(folds), fold=int(fold))


def write_json(data, path):
    """Write JSON atomically (the library's write: unique temporary name, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(lambda temporary: Path(temporary).write_text(json.dumps(data, indent=1) + "\n"), path)


def write_csv(rows, columns, path):
    """Write rows (dicts) as CSV atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(temporary):
        with open(temporary, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(write, path)


def cached_split(split_file, cache_dir, spacing):
    """The split of `split_file` when the cache holds every case of it at `spacing` (training without the cases'
    folder); InputError naming the missing ones otherwise."""
    split = json.loads(Path(split_file).read_text())
    missing = [c for c in split["train"] + split["validation"] if not cache_path(cache_dir, spacing, c).is_file()]
    if missing:
        raise InputError(f"{len(missing)} case(s) of {split_file} are not prepared in {cache_dir} at this spacing "
                         f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): run `python -m Training "
                         "prepare` where the cases are, or give --data-dir.")
    return split


def load_or_make_split(path, groups, val_fraction=0.2, seed=0, folds=None, fold=0):
    """The split recorded at `path` if it exists (resume, or a split given on purpose), else a new one written
    there (fold `fold` of `folds` when folds is given). A recorded split naming cases that are not available is an
    error."""
    if fold and not folds:
        raise InputError(f"--fold {fold} needs --folds (how many folds the cases are dealt into).")
    path = Path(path)
    if path.is_file():
        split = json.loads(path.read_text())
        missing = sorted((set(split["train"]) | set(split["validation"])) - set(groups))
        if missing:
            raise InputError(f"Split {path} names cases that are not in the data folder: {', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''}.")
        return split
    split = make_fold_split(groups, folds, fold, seed) if folds else make_split(groups, val_fraction, seed)
    write_json(split, path)
    return split


# ---------------------------------------------------------------------------------------------- prepare


def regions_from_labels(labels):
    """BraTS labels (0/1/2/4, 3 accepted for 4) -> uint8 (3, ...) nested regions WT, TC, ET."""
    labels = brats_labels(labels)
    return np.stack([np.isin(labels, REGION_LABELS[r]) for r in REGIONS]).astype(np.uint8)


def read_labels_on_case_grid(path, shape, ijk_to_ras):
    """Label map (K, J, I) uint8 on the case grid; resampled (nearest neighbour, physical space) if the label
    file lies on another grid."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"Cannot read the label map {path}: {error}") from None
    image = sitk.Cast(image, sitk.sitkUInt8) if image.GetPixelID() != sitk.sitkUInt8 else image
    array, matrix = sitk.GetArrayFromImage(image), ijk_to_ras_of(image)
    if not same_grid(array.shape, matrix, shape, ijk_to_ras):
        log.warning("The label map %s lies on another grid than the images; resampled (nearest neighbour).", path)
        array = resample_onto(array, matrix, shape, ijk_to_ras, sitk.sitkNearestNeighbor)
    return np.rint(array).astype(np.uint8)


def spacing_tag(spacing):
    if spacing is None:
        return "native"
    return "sp" + "x".join(f"{float(s):g}" for s in spacing)


def cache_path(cache_dir, spacing, case_id):
    return Path(cache_dir) / spacing_tag(spacing) / f"{case_id}.npz"


def _source_signature(case_files):
    paths = sorted(case_files.files.values()) + [labels_file(case_folder(case_files))]
    return json.dumps([[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in paths])


def prepare_case(case_files, spacing):
    """Prepared arrays of one case: dict with image (float32), regions (uint8), present, ijk_to_ras."""
    case, _ = read_case(case_files)
    prepared = prepare(case, spacing)
    labels = read_labels_on_case_grid(labels_file(case_folder(case_files)), case.image.shape[1:], case.ijk_to_ras)
    regions = regions_from_labels(prepared.labels_on_model_grid(labels))
    return {"image": prepared.image, "regions": regions, "present": np.array(case.present, dtype=bool),
            "ijk_to_ras": np.asarray(prepared.model_ijk_to_ras, dtype=np.float64)}


def cache_case(case_files, cache_dir, spacing, overwrite=False):
    """Prepare one case into the cache unless an up-to-date file exists; returns its path."""
    path = cache_path(cache_dir, spacing, case_files.case_id)
    signature = _source_signature(case_files)
    if path.is_file() and not overwrite:
        try:
            with np.load(path) as stored:
                if str(stored["source"]) == signature:
                    return path
        except (OSError, KeyError, ValueError):
            pass  # unreadable or from an older layout: prepare again
    arrays = prepare_case(case_files, spacing)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(temporary):
        with open(temporary, "wb") as stream:
            np.savez_compressed(stream, image=arrays["image"].astype(np.float16), regions=arrays["regions"],
                                present=arrays["present"], ijk_to_ras=arrays["ijk_to_ras"],
                                source=np.array(signature))

    write_atomically(write, path)
    return path


def _cache_one(args):
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    case_files, cache_dir, spacing, overwrite = args
    return case_files.case_id, str(cache_case(case_files, cache_dir, spacing, overwrite))


def prepare_cache(cases, cache_dir, spacing, workers=1, overwrite=False, progress=True):
    """Prepare every CaseFiles of `cases` ({id: CaseFiles} or a list) into the cache; returns {id: path}."""
    items = list(cases.values()) if isinstance(cases, dict) else list(cases)
    jobs = [(case_files, str(cache_dir), None if spacing is None else tuple(spacing), overwrite)
            for case_files in items]
    bar = tqdm(total=len(jobs), desc="Preparing", unit="case", disable=not progress)
    paths = {}
    if workers <= 1:
        for job in jobs:
            paths[job[0].case_id] = cache_case(*job)
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            for case_id, path in pool.map(_cache_one, jobs):
                paths[case_id] = Path(path)
                bar.update()
    bar.close()
    return paths


def load_cached(path, dtype=np.float32):
    """A cached case: dict with image (4, D, H, W) (float32, or as stored with dtype=np.float16), regions uint8
    (3, D, H, W), present (4,) bool, ijk_to_ras (4, 4)."""
    with np.load(path) as stored:
        return {"image": stored["image"].astype(dtype, copy=False), "regions": stored["regions"],
                "present": stored["present"].astype(bool), "ijk_to_ras": stored["ijk_to_ras"]}
