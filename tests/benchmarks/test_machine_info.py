"""The benchmark's machine record names the CPU features that decide its matmul kernels: the same
step is 0.77-0.80x float32's time in bfloat16 on a CPU with AMX and 1.06-1.22x on an AVX2-only one
(benchmarks/README.md), so a result without them cannot be read."""

from __future__ import annotations

from benchmarks.suite import MATMUL_CPU_FLAGS, cpu_matmul_flags, machine_info

XEON = (
    "processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n\n"
    "processor\t: 1\nflags\t\t: fpu\n"
)
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma sha_ni\n"


def test_flags_from_the_first_processor_in_a_fixed_order() -> None:
    assert cpu_matmul_flags(XEON) == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"]
    assert cpu_matmul_flags(EPYC) == ["avx2", "fma"]
    assert cpu_matmul_flags("no flags line\n") == []


def test_machine_info_records_them() -> None:
    info = machine_info()
    assert info["cpu_matmul_flags"] is None or set(info["cpu_matmul_flags"]) <= set(MATMUL_CPU_FLAGS)
