"""What this CPU is and can do, read once from /proc/cpuinfo: its model name (training records) and its bfloat16
instructions (the precision policy). Tests inject another CPU by replacing `probe`."""

import functools
import platform
from dataclasses import dataclass
from typing import Optional

# bfloat16 instruction sets, most capable first: they give bf16 models different results (transfuse's first weights
# lost ET Dice 0.001 with AVX512-BF16, 0.075 with AMX), so a model's bfloat16 verdict is measured per kind.
BF16_KINDS = ("amx_bf16", "avx512_bf16", "bf16")


@dataclass(frozen=True)
class CpuInfo:
    model_name: str
    flags: frozenset

    @property
    def bf16_kind(self) -> Optional[str]:
        """The bfloat16 instructions this CPU computes with (BF16_KINDS: x86 amx_bf16 or avx512_bf16, Arm bf16);
        None where it has none: emulated bfloat16 is slower than float32."""
        return next((kind for kind in BF16_KINDS if kind in self.flags), None)


def parse_cpuinfo(text: str) -> CpuInfo:
    """CpuInfo of a /proc/cpuinfo text (x86 "flags", Arm "Features")."""
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return CpuInfo(name or platform.processor() or platform.machine(), frozenset(flags))


@functools.lru_cache(maxsize=None)
def read_proc_cpuinfo() -> CpuInfo:
    """This machine's CpuInfo; no flags where there is no /proc/cpuinfo (Windows, macOS), so nothing is guessed."""
    try:
        with open("/proc/cpuinfo") as stream:
            return parse_cpuinfo(stream.read())
    except OSError:
        return parse_cpuinfo("")


probe = read_proc_cpuinfo  # tests put a function returning another CpuInfo here
