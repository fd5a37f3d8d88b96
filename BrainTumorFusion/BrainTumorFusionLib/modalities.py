"""The one place that defines modality order and how node/file names map to modality roles."""

import fnmatch
import re
from typing import Iterable, Optional, Sequence

# Channel order of every network input, everywhere (inference, training, catalogue).
MODALITIES = ("t1", "t1ce", "t2", "flair")

DISPLAY_NAMES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}

# Name tokens per role, most specific first across all roles: BraTS 2018-2021 (`t1`, `t1ce`, `t2`, `flair`),
# BraTS 2023 (`t1n`, `t1c`, `t2w`, `t2f`) and common variants. A name takes the role of the first token it
# contains, so "t1ce" never falls through to "t1" and "t2f" (FLAIR) never to "t2".
ROLE_TOKENS = (
    ("flair", "flair"),
    ("t2f", "flair"),
    ("t1ce", "t1ce"),
    ("t1gd", "t1ce"),
    ("t1c", "t1ce"),
    ("t2w", "t2"),
    ("t2", "t2"),
    ("t1n", "t1"),
    ("t1w", "t1"),
    ("t1", "t1"),
)
ROLE_PATTERNS = tuple((f"*{token}*", role) for token, role in ROLE_TOKENS)
# A trailing modality token ("Brats18_X_1_t1ce", "BraTS-GLI-0001-t2f", "case t1"); longest first.
_TRAILING_TOKEN = re.compile(
    r"[ _.\-]+(" + "|".join(sorted((token for token, _ in ROLE_TOKENS), key=len, reverse=True)) + r")$",
    re.IGNORECASE)


def present_of(roles: Iterable[str]) -> tuple[bool, ...]:
    """One bool per modality (MODALITIES order): whether it is among `roles`."""
    roles = set(roles)
    return tuple(role in roles for role in MODALITIES)


def display(roles: Sequence[str]) -> str:
    """"T1, T1ce" for ("t1", "t1ce")."""
    return ", ".join(DISPLAY_NAMES[role] for role in roles)


def how_to_give(roles: Sequence[str]) -> str:
    """How to supply modalities, in words that fit the command line, a batch folder and the module alike."""
    them = "it" if len(roles) == 1 else "them"
    flags = " ".join(f"--{role}" for role in roles)
    files = ", ".join(f"<id>_{role}" for role in roles)
    return f"give {them} ({flags}, or {files} in the case folder) or select {them} in the module"


def role_of(name: str) -> Optional[str]:
    """Return the modality role a node or file name suggests, or None."""
    lowered = name.lower()
    for pattern, role in ROLE_PATTERNS:
        if fnmatch.fnmatchcase(lowered, pattern):
            return role
    return None


def role_of_token(token: str) -> Optional[str]:
    """The role of one exact name token ("t1c" -> "t1ce"), or None."""
    return dict(ROLE_TOKENS).get(token.lower())


def case_name_of(name: str) -> str:
    """A node or file name without its trailing modality token ("Brats18_X_1_t1ce" -> "Brats18_X_1"); the name
    itself if nothing is left."""
    stripped = _TRAILING_TOKEN.sub("", name.strip())
    return stripped or name


def assign_roles(names: Sequence[str]) -> dict[str, Optional[str]]:
    """Map each role to at most one of `names` (the most specific match wins; no name in two roles).

    Among several names that fit one role equally well, the first in the given order wins.
    """
    best = {}  # role -> (pattern rank, order, name)
    for order, name in enumerate(names):
        lowered = name.lower()
        for rank, (pattern, role) in enumerate(ROLE_PATTERNS):
            if fnmatch.fnmatchcase(lowered, pattern):
                candidate = (rank, order, name)
                if role not in best or candidate < best[role]:
                    best[role] = candidate
                break
    return {role: (best[role][2] if role in best else None) for role in MODALITIES}
