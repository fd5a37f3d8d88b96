"""The GUI's background process: streamed lines, PROGRESS and RESULT lines, cancel kills the whole process tree."""

import os
import sys
import textwrap
import time

from BrainTumorFusionLib.app import cli
from BrainTumorFusionLib.app.process_runner import (
    BackgroundProcess,
    format_progress,
    format_result,
    parse_progress,
    parse_result,
)
from BrainTumorFusionLib.errors import InputError


def test_progress_lines_round_trip():
    assert parse_progress(format_progress(0.25, "Segmenting")) == (0.25, "Segmenting")
    assert parse_progress("INFO: something") is None
    assert parse_progress("PROGRESS nan-ish") is None


def test_result_lines_round_trip():
    assert parse_result(format_result()) == {"status": "done"}
    assert parse_result(format_result(InputError("Select T1ce."))) == {
        "status": "failed", "kind": "InputError", "error": "Select T1ce."}
    # Errors that are not the library's own carry their type, so the message still makes sense.
    assert parse_result(format_result(MemoryError("out of memory")))["error"] == "MemoryError: out of memory"
    for line in ("RESULT", "RESULT {not json", 'RESULT ["done"]', "ERROR: x", 'RESULTS {"status": "done"}'):
        assert parse_result(line) is None


def test_predict_ends_with_a_result_line_and_a_meaningful_exit_status(tmp_path, capsys):
    """The GUI's background process, in this process: a bad input is an InputError in its RESULT line, exit 2."""
    missing = tmp_path / "missing_t1.nii.gz"
    assert cli.main(["predict", "--t1", str(missing), "--output-dir", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    result = parse_result(out.strip().splitlines()[-1])
    assert result["status"] == "failed" and result["kind"] == "InputError" and str(missing) in result["error"]
    assert err.startswith(f"ERROR: {result['error']}")  # the human-readable line stays on stderr


def test_other_commands_print_no_result_line(tmp_path, capsys):
    assert cli.main(["models", "--catalogue", str(tmp_path / "missing.json")]) == 2
    out, err = capsys.readouterr()
    assert "RESULT" not in out and err.startswith("ERROR: Model catalogue")


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
