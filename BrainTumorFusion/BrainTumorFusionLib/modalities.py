"""The one place that defines modality order and how node/file names map to modality roles."""

import fnmatch

# Channel order of every network input, everywhere (inference, training, catalogue).
MODALITIES = ("t1", "t1ce", "t2", "flair")

DISPLAY_NAMES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}

# Name patterns per role, most specific first across all roles. A name takes the role of the first
# pattern it matches, so "t1ce" never falls through to "t1" and "t2f" (FLAIR, BraTS 2023) never to "t2".
ROLE_PATTERNS = (
    ("*flair*", "flair"),
    ("*t2f*", "flair"),
    ("*t1ce*", "t1ce"),
    ("*t1gd*", "t1ce"),
    ("*t1c*", "t1ce"),
    ("*t2w*", "t2"),
    ("*t2*", "t2"),
    ("*t1n*", "t1"),
    ("*t1w*", "t1"),
    ("*t1*", "t1"),
)


def role_of(name):
    """Return the modality role a node or file name suggests, or None."""
    lowered = name.lower()
    for pattern, role in ROLE_PATTERNS:
        if fnmatch.fnmatchcase(lowered, pattern):
            return role
    return None


def assign_roles(names):
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
