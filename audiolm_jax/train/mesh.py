"""Device mesh, logical-axis rules and the shardings built from them.

Every weight that wants to be sharded carries logical axis names (``embed``, ``mlp``,
``heads``, ``vocab``...); :data:`LOGICAL_AXIS_RULES` is the one table that maps those names to
the mesh axes ``data``, ``fsdp`` and ``tensor``. Anything without names is replicated.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Batches are split over data *and* fsdp (FSDP is data parallelism with sharded weights).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    # A KV cache's merged [batch * heads] rows (batch-major): the batch split of "batch"
    # then the heads split of "heads", i.e. the same devices hold the same (example, head).
    ("batch_heads", ("data", "fsdp", "tensor")),
    ("kv", None),
    ("vocab", "tensor"),
    ("length", None),
    ("levels", None),
    ("conv_in", None),
    ("conv_out", None),
    ("codebook", None),
    # Activations have names of their own (as MaxText's ``activation_*``), so a rule for a
    # weight axis never reshards the residual stream by accident.
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("activation_levels", None),
    ("steps", None),
    ("layers", None),  # the stacked axis of scanned layers
)


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Fills the one axis given as -1 so that data*fsdp*tensor == num_devices."""
    sizes = [int(data), int(fsdp), int(tensor)]
    names = ["mesh.data", "mesh.fsdp", "mesh.tensor"]
    for name, size in zip(names, sizes):
        if size == 0 or size < -1:
            raise ValueError(f"{name} must be a positive integer or -1, got {size}")
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1:
        raise ValueError(f"only one of {names} may be -1, got {sizes}")
    known = math.prod(s for s in sizes if s != -1)
    if fills:
        if num_devices % known:
            raise ValueError(
                f"cannot fill {names[fills[0]]}: {num_devices} devices are not divisible by {known}")
        sizes[fills[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh (data, fsdp, tensor) = {tuple(sizes)} needs {math.prod(sizes)} devices, "
            f"but {num_devices} are available")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh from a config with keys data/fsdp/tensor."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, len(devices))
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # fake CPU devices or odd topologies: a plain reshape is fine
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis over data and fsdp; the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def tree_shardings(mesh: Mesh, abstract_tree: Any, rules=LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for a pytree that may hold ``nn.LogicallyPartitioned`` boxes.

    Boxed leaves get the mesh axes their logical names map to; plain leaves are replicated.
    The result has the structure of ``abstract_tree`` with boxes unwrapped.
    """
    specs = nn.get_partition_spec(abstract_tree)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    return nn.meta.unbox(shardings)


def global_batch(local: Any, sharding: NamedSharding) -> Any:
    """Assembles per-process numpy batches into global arrays split over the batch axes."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)
