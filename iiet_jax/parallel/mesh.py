"""Device meshes with the named axes `data`, `fsdp`, `tensor`.

`config.mesh` gives the per-slice (ICI) axis sizes, one of which may be -1
("everything left"), and `config.mesh.slices` the number of slices / nodes
joined over DCN; with more than one slice the mesh is built by
`mesh_utils.create_hybrid_device_mesh` and the slices split the `data` axis.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from iiet_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")


class MeshError(UserError, ValueError):
  """Mesh axis sizes that do not fit the devices."""

  kind = "Config"


def resolve_axis_sizes(sizes: Mapping[str, int], num_devices: int
                       ) -> tuple[int, ...]:
  """Fills the one -1 entry so the product of the axes is `num_devices`."""
  values = [int(sizes[name]) for name in MESH_AXES]
  described = ", ".join(f"mesh.{n}={v}" for n, v in zip(MESH_AXES, values))
  wild = [i for i, v in enumerate(values) if v == -1]
  if len(wild) > 1:
    raise MeshError(f"At most one mesh axis may be -1; got {described}.")
  if any(v == 0 or v < -1 for v in values):
    raise MeshError(f"Mesh axis sizes must be positive or -1; got {described}.")
  known = math.prod(v for v in values if v != -1)
  if wild:
    if num_devices % known:
      raise MeshError(
          f"Cannot fill the -1 axis: {num_devices} devices are not divisible "
          f"by the product {known} of the other axes ({described}).")
    values[wild[0]] = num_devices // known
  if math.prod(values) != num_devices:
    raise MeshError(
        f"Mesh axes multiply to {math.prod(values)} but there are "
        f"{num_devices} devices ({described}); make the product equal the "
        f"device count or set one axis to -1.")
  return tuple(values)


def make_mesh(sizes: Mapping[str, int], slices: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over `devices` (default: all), axes `data`, `fsdp`, `tensor`."""
  devices = list(jax.devices() if devices is None else devices)
  if slices < 1 or len(devices) % slices:
    raise MeshError(f"mesh.slices={slices} must be >= 1 and divide the "
                    f"{len(devices)} devices.")
  per_slice = resolve_axis_sizes(sizes, len(devices) // slices)
  if slices == 1:
    return jax.make_mesh(per_slice, MESH_AXES, devices=devices,
                         axis_types=(AxisType.Auto,) * len(MESH_AXES))
  dcn = (slices, 1, 1)
  if hasattr(devices[0], "slice_index"):        # TPU multi-slice
    device_array = mesh_utils.create_hybrid_device_mesh(
        per_slice, dcn, devices=devices)
  elif jax.process_count() == slices:           # multi-node: a node per slice
    device_array = mesh_utils.create_hybrid_device_mesh(
        per_slice, dcn, devices=devices, process_is_granule=True)
  elif devices[0].platform == "cpu":            # tests: slices in device order
    device_array = np.array(devices).reshape(
        slices * per_slice[0], *per_slice[1:])
  else:
    raise MeshError(
        f"mesh.slices={slices}, but the devices carry no slice index and "
        f"there are {jax.process_count()} processes; on GPU clusters set "
        f"slices to the number of nodes (one process per node).")
  return Mesh(device_array, MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def describe(mesh: Mesh) -> str:
  shape = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
  kind = mesh.devices.flat[0].device_kind
  return f"{shape} over {mesh.devices.size} {kind} device(s)"


def axis_size(mesh: Mesh, axes) -> int:
  """Product of the sizes of mesh axes named by a rule value."""
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return int(np.prod([mesh.shape[a] for a in axes]))
