"""Background process runner (used by the GUI): streams output lines, kills the whole tree; and the two kinds of
line the background process (the library's `predict` command) writes for its caller.

Qt-free: a reader thread fills a queue; the GUI drains it from a timer with `poll()`.

    PROGRESS 0.450 Segmenting            progress fraction and message, any number of times
    RESULT {"status": "done"}            the last line: how the run ended; on failure
    RESULT {"status": "failed", "kind": "InputError", "error": "Model 'missu' needs T1ce, ..."}

The exit status agrees (0 done, 2 an error the user can act on, 130 cancelled, 1 anything else); a run that
ends without a RESULT line (killed, crashed) failed.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from typing import Any, Optional, Sequence

from ..errors import BrainTumorFusionError

PROGRESS_PREFIX = "PROGRESS"
RESULT_PREFIX = "RESULT"


def format_progress(fraction: float, message: str) -> str:
    return f"{PROGRESS_PREFIX} {fraction:.3f} {message}"


def parse_progress(line: str) -> Optional[tuple[float, str]]:
    """(fraction, message) of a progress line, else None."""
    parts = line.strip().split(" ", 2)
    if len(parts) < 2 or parts[0] != PROGRESS_PREFIX:
        return None
    try:
        fraction = float(parts[1])
    except ValueError:
        return None
    return fraction, parts[2] if len(parts) > 2 else ""


def format_result(error: Optional[BaseException] = None) -> str:
    """The RESULT line of a run that ended with `error` (None: done)."""
    if error is None:
        return f"{RESULT_PREFIX} {json.dumps({'status': 'done'})}"
    # The library's own errors say what to do; anything else also needs its type to make sense.
    message = str(error) if isinstance(error, BrainTumorFusionError) else f"{type(error).__name__}: {error}"
    return f"{RESULT_PREFIX} {json.dumps({'status': 'failed', 'kind': type(error).__name__, 'error': message})}"


def parse_result(line: str) -> Optional[dict[str, Any]]:
    """The fields of a RESULT line ({"status": "done" | "failed", ...}), else None."""
    prefix, _, payload = line.strip().partition(" ")
    if prefix != RESULT_PREFIX:
        return None
    try:
        fields = json.loads(payload)
    except ValueError:
        return None
    return fields if isinstance(fields, dict) and "status" in fields else None


class BackgroundProcess:
    """Runs `command` (a list) with stdout+stderr merged into lines; `cancel()` kills it and its children."""

    def __init__(self, command: Sequence[str], env: Optional[dict[str, str]] = None, cwd: Optional[str] = None):
        self.command = list(command)
        self._lines = queue.Queue()
        kwargs = {"start_new_session": True} if os.name == "posix" else {
            "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True, bufsize=1, env=env, cwd=cwd,
                                        **kwargs)
        self.cancelled = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self.process.stdout.close()

    def poll(self) -> tuple[list[str], Optional[int]]:
        """(new output lines, return code or None while running). The code comes once all lines are read."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                break
        code = self.process.poll()
        if code is not None and self._reader.is_alive():
            code = None  # keep the last lines in order with the exit
        return lines, code

    def wait(self, timeout: Optional[float] = None) -> int:
        self.process.wait(timeout)
        self._reader.join(timeout)
        return self.process.returncode

    def cancel(self) -> None:
        """Kill the process and every process it started."""
        self.cancelled = True
        if self.process.poll() is not None:
            return
        if os.name == "posix":
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True)
        self.process.wait()


def library_command(python_executable: Optional[str], *arguments: str) -> list[str]:
    """Command line running this library's CLI with the given Python (PythonSlicer inside Slicer).

    The entry file is run by path, so it works whether or not the library is on that Python's path.
    """
    entry = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "__main__.py")
    return [python_executable or sys.executable, entry, *arguments]
