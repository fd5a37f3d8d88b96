"""A batch under an address-space limit (`ulimit -v`, as SGE's h_vmem sets it): a case that does not fit is refused
before it is read, with the limit named, instead of failing inside SimpleITK or torch as an "Unexpected
RuntimeError ... please report it". The command line runs in a subprocess under the limit, on a crop of a real
case (batch_cases)."""

import json
import shlex
import subprocess
import sys

import pytest

from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.engine.memory import ADDRESS_SPACE_PER_BYTE, BLAS_BUFFER, needed_bytes
from BrainTumorFusionLib.engine.pipeline import Pipeline
from Testing.batch_cases import cli_command, cli_environment, random_hafb_catalogue, write_small_case
from Testing.realdata import REPO

SIZE = (176, 192, 144)  # the largest crop of batch_cases.SOURCE around its tumor: 4.9 M voxels
# The command line with the figure `available_bytes` sees at the memory check printed on stderr: the address
# space the loaded program takes there, on which the limit below is set.
PROBE = """
import sys
from BrainTumorFusionLib.engine import memory
from BrainTumorFusionLib.app.cli import main

def at_the_check(free=memory._meminfo_available):
    print("VmSize at the check:", memory._vm_size(), file=sys.stderr, flush=True)
    return free()

memory._meminfo_available = at_the_check
sys.exit(main(sys.argv[1:]))
"""


def segment(inputs, output, catalogue, limit_kb=None):
    arguments = ["segment", "--input-dir", inputs, "--output-dir", output, "--model", "random-hafb",
                 "--catalogue", catalogue, "--device", "cpu"]
    if limit_kb is None:
        command = [sys.executable, "-c", PROBE, *map(str, arguments)]
    else:
        command = ["bash", "-c", f"ulimit -v {limit_kb} && exec {shlex.join(cli_command(*arguments))}"]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=cli_environment(), timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ulimit -v and /proc/self/status are Linux's")
def test_a_case_too_large_for_the_address_space_limit_is_refused_with_the_limit_named(tmp_path):
    catalogue = random_hafb_catalogue(tmp_path)
    write_small_case(tmp_path / "small", "small", size=(64, 64, 48))
    probe = segment(tmp_path / "small", tmp_path / "probe", catalogue)
    assert probe.returncode == 0, probe.stderr[-2000:]
    taken = int(probe.stderr.split("VmSize at the check: ")[1].split()[0])
    segmenter = Pipeline(model="random-hafb", device="cpu", catalogue=Catalogue.load([catalogue])).segmenter
    need = needed_bytes(SIZE, (1.0, 1.0, 1.0), [segmenter])  # 308 MB
    # Half of what the case needs left beyond the program: before, the check saw the machine's free memory, and
    # the case failed inside SimpleITK ("Failed to allocate memory for image") as an unexpected RuntimeError.
    limit = taken + need // 2
    write_small_case(tmp_path / "input", "large", size=SIZE)
    run = segment(tmp_path / "input", tmp_path / "out", catalogue, limit_kb=limit // 1024)
    assert run.returncode == 1, run.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "large.json").read_text())
    reason = record["reason"]
    assert record["status"] == "failed" and "Unexpected" not in reason, reason
    assert reason.startswith(f"Not enough memory for this case: it needs about {need / 2**20:.0f} MB, and "), reason
    # what the limit leaves beyond the program (and numpy's BLAS buffer, mapped before the figure is taken), over
    # the address space a case takes per byte it needs; within 20 MB of what the probe saw
    free = float(reason.split(", and ")[1].split(" MB")[0]) * 2**20
    leaves = limit // 1024 * 1024 - taken
    assert (leaves - BLAS_BUFFER) / ADDRESS_SPACE_PER_BYTE - 20 * 2**20 < free < leaves / ADDRESS_SPACE_PER_BYTE
    assert (f"under the address-space limit of this process (ulimit -v; SGE's h_vmem sets it) of "
            f"{limit / 2**30:.1f} GB. Ask the job for a larger address-space limit (SGE: -l h_vmem") in reason, reason
    assert sorted(path.name for path in (tmp_path / "out").iterdir() if not path.name.startswith(".")) == [
        "large.json", "summary.csv"]
