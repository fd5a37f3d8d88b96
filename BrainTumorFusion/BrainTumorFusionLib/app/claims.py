"""Per-case claims: `.<id>.claim` in the output folder marks a case a run is computing now, so that two runs over the
same cases (the same command started twice) compute each case once. A stale claim (its run died) is taken over."""

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from ..files.file_io import PathLike
from .records import SUMMARY_COLUMNS, Row, folder_lock

# A claim this old is stale whoever holds it: a case takes minutes, so its run has died (killed on another host,
# where its process cannot be looked up, or its process id reused on this one).
CLAIM_LIMIT_S = 6 * 3600
UNWRITTEN_CLAIM_S = 60  # a claim still empty after this long was left by a run that died as it created it


def claim_path(output_dir: PathLike, case_id: str) -> Path:
    return Path(output_dir) / f".{case_id}.claim"


def claim_case(output_dir: PathLike, case_id: str) -> Optional[dict[str, Any]]:
    """Claim a case before computing it: None when this process now holds the claim, else the live claim of
    another run ({"pid", "host", "started"}; {} while that run is still writing it). A stale claim (its process
    gone on this host, or older than CLAIM_LIMIT_S) is taken over. release_claim removes it."""
    path = claim_path(output_dir, case_id)
    if _create_claim(path):
        return None
    with folder_lock(Path(output_dir)):  # one run at a time judges a claim stale, so only one takes it over
        holder = _live_claim(path)
        if holder is not None:
            return holder
        path.unlink(missing_ok=True)
        return None if _create_claim(path) else (_live_claim(path) or {})


def release_claim(output_dir: PathLike, case_id: str) -> None:
    """Remove this process's claim of the case (one taken over by another run as stale stays)."""
    path = claim_path(output_dir, case_id)
    holder = _read_claim(path) or {}
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def claimed_row(case_id: str, holder: dict[str, Any]) -> Row:
    """The summary row of a case left to the run that claimed it (summary.csv gets that run's record)."""
    started = holder.get("started")
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, float) else "?"
    row = {"case_id": case_id, "status": "claimed",
           "message": f"claimed by another run (pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
                      f"{started})"}
    return {column: row.get(column, "") for column in SUMMARY_COLUMNS}


def _create_claim(path: Path) -> bool:
    """Create the claim file holding this run, if there is none: O_EXCL makes creating it atomic, also between
    hosts sharing the folder (NFS v3 and later)."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, stream)
    return True


def _read_claim(path: Path) -> Optional[dict[str, Any]]:
    """The claim's content; {} when it is empty or unreadable, None when there is no claim."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _live_claim(path: Path) -> Optional[dict[str, Any]]:
    """The claim at path if its run may still be computing the case, else None (no claim, or a stale one)."""
    holder = _read_claim(path)
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return None
    if holder is None or age > CLAIM_LIMIT_S:
        return None
    if not holder:
        return holder if age < UNWRITTEN_CLAIM_S else None
    if holder.get("host") != socket.gethostname():
        return holder  # a process of another host cannot be looked up: its claim holds until CLAIM_LIMIT_S
    pid = holder.get("pid")
    # 0 and negative ids would signal process groups; this process's own id was a dead run's, since reused
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid() or _process_gone(pid):
        return None
    return holder


def _process_gone(pid: int) -> bool:
    """Whether no process of this host has this id; False where that cannot be told (on Windows os.kill(pid, 0)
    would send it a Ctrl-C: a claim there holds until CLAIM_LIMIT_S)."""
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        pass
    return False
