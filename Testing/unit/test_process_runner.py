"""The GUI's background process: streamed lines, progress parsing, cancel kills the whole process tree."""

import os
import sys
import textwrap
import time

from BrainTumorFusionLib.process_runner import BackgroundProcess, format_progress, parse_progress


def test_progress_lines_round_trip():
    assert parse_progress(format_progress(0.25, "Segmenting")) == (0.25, "Segmenting")
    assert parse_progress("INFO: something") is None
    assert parse_progress("PROGRESS nan-ish") is None


def wait_for(predicate, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_output_lines_arrive_in_order_with_exit_code():
    process = BackgroundProcess([sys.executable, "-c", "print('a'); print('PROGRESS 0.500 half'); exit(3)"])
    lines = []
    assert wait_for(lambda: (lines.extend(process.poll()[0]) or process.poll()[1] is not None))
    lines += process.poll()[0]
    assert lines == ["a", "PROGRESS 0.500 half"]
    assert process.wait() == 3


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a killed child not yet reaped is a zombie: dead
        return stat.read().split()[2] != "Z"


def test_cancel_kills_children_too(tmp_path):
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(tmp_path / 'child.pid')!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(60)
    """)
    process = BackgroundProcess([sys.executable, "-c", script])
    assert wait_for(lambda: (tmp_path / "child.pid").exists() and (tmp_path / "child.pid").read_text())
    child = int((tmp_path / "child.pid").read_text())
    process.cancel()
    assert process.cancelled and process.process.returncode is not None
    assert wait_for(lambda: not alive(child), 10)
