"""Cloud TPU slices by accelerator type (``v5p-8``, ``v5e-16``, ...): their devices for a mesh,
and the per-chip figures the compile report needs.

A slice's name counts TensorCores for v4 and v5p (two per chip, one JAX device per chip in
"megacore" mode) and chips for v5e and v6e. Shapes follow the standard slice shapes (the
torus dimensions double, smallest first); a size with no standard shape is refused.
"""

from __future__ import annotations

import dataclasses
import os
import re

from audiolm_jax.errors import ConfigError

# Per chip: usable HBM as the TPU compiler reports it ("exceeds available HBM (95.74G)",
# measured here with libtpu 0.0.42), peak dense bf16 FLOP/s and HBM bandwidth (Cloud TPU
# documentation; MaxText uses the same peaks).
_GENERATIONS = {
    #        topology prefix, 3-D torus, cores per chip, usable HBM GiB, bf16 FLOP/s, HBM B/s
    "v4": ("v4", True, 2, 30.75, 275e12, 1.2e12),
    "v5p": ("v5", True, 2, 95.74, 459e12, 2.765e12),
    "v5e": ("v5e", False, 1, 15.75, 197e12, 0.819e12),
    "v6e": ("v6e", False, 1, 31.25, 918e12, 1.64e12),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e"}
_NAME = re.compile(r"^(?P<gen>[a-z0-9]+)-(?P<n>\d+)$")

TPU_MISSING = ("compiling for a TPU needs libtpu, which is not installed: "
               "pip install -e '.[tpu]' (jax's own jax[tpu] pin)")


class TPUUnavailable(RuntimeError):
    """libtpu is not installed, so no TPU topology can be described."""


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str  # as given, e.g. 'v5p-8'
    generation: str  # 'v4' | 'v5p' | 'v5e' | 'v6e'
    chips: int
    topology: str  # get_topology_desc's name, e.g. 'v5:2x2x1'
    chips_per_host: tuple
    wrap: tuple
    hbm_bytes: int  # usable HBM per chip
    peak_flops: float  # dense bf16 FLOP/s per chip
    hbm_bandwidth: float  # bytes/s per chip

    @property
    def megacore(self) -> bool:
        return _GENERATIONS[self.generation][2] == 2


def _torus(chips: int, dims: int) -> tuple[int, ...] | None:
    """The standard slice shape of ``chips`` chips: from 2x2(x1), double the last of the
    smallest dimensions until the count is reached (2-D slices stop at 16x16)."""
    shape = [2, 2, 1] if dims == 3 else [2, 2]
    if chips == 1:
        return (1,) * dims
    while True:
        n = 1
        for d in shape:
            n *= d
        if n == chips:
            return tuple(shape)
        if n > chips or (dims == 2 and n >= 256):
            return None
        shape[dims - 1 - shape[::-1].index(min(shape))] *= 2


def parse_slice(name: str) -> Slice:
    """``v5p-8``, ``v4-16``, ``v5e-16`` (also ``v5litepod-16``), ``v6e-8`` ... -> Slice; a
    one-line ConfigError for anything else."""
    m = _NAME.match(str(name).strip().lower())
    gen = _ALIASES.get(m["gen"], m["gen"]) if m else None
    if gen not in _GENERATIONS:
        raise ConfigError(f"unknown TPU topology {name!r}: give a Cloud TPU accelerator type "
                          f"such as v4-8, v5p-8 ... v5p-1024, v5e-16 (v5litepod-16), v6e-8")
    prefix, three_d, cores, hbm_gib, peak, bandwidth = _GENERATIONS[gen]
    n = int(m["n"])
    chips = n // cores if n % cores == 0 else 0
    shape = _torus(chips, 3 if three_d else 2) if chips else None
    if shape is None:
        raise ConfigError(f"unknown TPU topology {name!r}: {gen} slices come in sizes "
                          f"{', '.join(f'{gen}-{c * cores}' for c in _standard_chips(three_d))}")
    if chips == 1:
        per_host, wrap = (1, 1, 1), (False, False, False)
    elif three_d:
        per_host, wrap = (2, 2, 1), (min(shape) >= 4,) * 3
    else:
        per_host, wrap = (2, 2, 1), (shape[0] >= 16, shape[1] >= 16, False)
    return Slice(name=str(name), generation=gen, chips=chips,
                 topology=f"{prefix}:{'x'.join(map(str, shape))}", chips_per_host=per_host,
                 wrap=wrap, hbm_bytes=int(hbm_gib * 2**30), peak_flops=peak,
                 hbm_bandwidth=bandwidth)


def _standard_chips(three_d: bool) -> list[int]:
    return [c for c in (1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
            if (c > 1 or not three_d) and (three_d or c <= 256)]


def quiet_libtpu() -> None:
    """libtpu prints host-detection warnings and writes /tmp/tpu_logs when it starts on a
    machine without TPUs; these settings (no effect on the topologies) silence both. Only for
    compile-only use: a TPU VM detects its own."""
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_LOG_DIR", "disabled")
    # Compile-only use holds no chips: let several processes (tests, a second compile) load it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def slice_devices(tpu: Slice, num_slices: int = 1) -> list:
    """The compile-only devices of ``num_slices`` copies of the slice (one per chip)."""
    from jax.experimental import topologies

    quiet_libtpu()
    kwargs = dict(chip_config_name="megacore") if tpu.megacore else {}
    try:
        topo = topologies.get_topology_desc(
            platform="tpu", topology_name=tpu.topology, chips_per_host_bounds=tpu.chips_per_host,
            num_slices=int(num_slices), wrap=tpu.wrap, **kwargs)
    except RuntimeError as e:
        if "not installed" in str(e) or "TPU support" in str(e):
            raise TPUUnavailable(TPU_MISSING) from None
        raise
    return list(topo.devices)
