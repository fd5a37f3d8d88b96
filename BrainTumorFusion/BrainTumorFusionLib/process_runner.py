"""Background process runner (used by the GUI): streams output lines, parses progress, kills the whole tree.

Qt-free: a reader thread fills a queue; the GUI drains it from a timer with `poll()`.
"""

import os
import queue
import signal
import subprocess
import sys
import threading

PROGRESS_PREFIX = "PROGRESS"


def format_progress(fraction, message):
    return f"{PROGRESS_PREFIX} {fraction:.3f} {message}"


def parse_progress(line):
    """(fraction, message) of a progress line, else None."""
    parts = line.strip().split(" ", 2)
    if len(parts) < 2 or parts[0] != PROGRESS_PREFIX:
        return None
    try:
        fraction = float(parts[1])
    except ValueError:
        return None
    return fraction, parts[2] if len(parts) > 2 else ""


class BackgroundProcess:
    """Runs `command` (a list) with stdout+stderr merged into lines; `cancel()` kills it and its children."""

    def __init__(self, command, env=None, cwd=None):
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

    def _read(self):
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self.process.stdout.close()

    def poll(self):
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

    def wait(self, timeout=None):
        self.process.wait(timeout)
        self._reader.join(timeout)
        return self.process.returncode

    def cancel(self):
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


def library_command(python_executable, *arguments):
    """Command line running this library's CLI with the given Python (PythonSlicer inside Slicer).

    The entry file is run by path, so it works whether or not the library is on that Python's path.
    """
    entry = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")
    return [python_executable or sys.executable, entry, *arguments]
