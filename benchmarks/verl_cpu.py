"""Run verl's FSDP training engine on a machine without a GPU, for profiling and for CPU tests of GPU scripts.

verl 0.9.1 ships CUDA, NPU and ROCm platforms only. A platform is verl's own plugin point
(``verl.plugin.platform``: subclass, then ``set_platform``); this one reports a ``cpu`` device and gloo.
Three more things keep the CUDA-only defaults away, none of them inside verl:

* the process group is created here with gloo before verl's worker would create ``cpu:gloo,cpu:gloo``;
* ``VERL_ENGINE_DEVICE``/``VERL_ENGINE_VENDOR`` (verl's own overrides) pick the FSDP engine registered for CUDA;
* FSDP1's ``sync_module_states`` refuses CPU parameters, although gloo broadcasts them (with one rank the
  broadcast is a copy onto itself): that check is skipped.

Import :func:`use_cpu` before building any verl worker. Never used by training: numbers from here are CPU
numbers (the profile's *shape*, not GPU time).
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.fsdp._init_utils as fsdp_init_utils
from verl.plugin.platform import platform_manager
from verl.plugin.platform.platform_cuda import PlatformCUDA


class _NoAccelerator(types.SimpleNamespace):
    """Stands in for ``torch.cuda``: memory queries read 0, everything else is a no-op."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # keep abc and copy from mistaking this for something it is not
            raise AttributeError(name)
        return lambda *args, **kwargs: 0


CPU_MODULE = _NoAccelerator(
    is_available=lambda: True,
    current_device=lambda: "cpu",
    device_count=lambda: 1,
    get_device_name=lambda *args: "cpu",
    manual_seed=torch.manual_seed,
    manual_seed_all=torch.manual_seed,
    get_rng_state=torch.get_rng_state,
    set_rng_state=torch.set_rng_state,
    mem_get_info=lambda *args: (0, 0),
)


class _CpuDeviceId(str):
    """``"cpu"`` as a device, ``0`` as a device index.

    verl passes ``current_device()`` both to ``tensor.to(...)`` (must stay on the CPU: ``"cpu"``) and into
    ``f"{device_name}:{device_id}"`` when it moves an FSDP1 module back before saving a checkpoint (must read
    ``cpu:0``, since ``cpu:cpu`` is no device).
    """

    def __format__(self, spec: str) -> str:
        return format(0, spec)


class PlatformCPU(PlatformCUDA):
    """verl's CUDA platform with every device call answered for the CPU."""

    device_name = "cpu"
    vendor_name = "cpu"
    device_module = CPU_MODULE

    def is_available(self) -> bool:
        return True

    def current_device(self) -> str:  # type: ignore[override]  # tensors.to(current_device()) must stay on CPU
        return _CpuDeviceId("cpu")

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index: int | None = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def ray_resource_name(self) -> str:
        return "CPU"

    def is_ipc_supported(self) -> bool:
        return False

    @contextlib.contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def cudart(self) -> None:
        return None


def use_cpu(port: int = 29531) -> None:
    """Make this process a verl training process on the CPU: one rank, or the rank ``torchrun`` started.

    Under ``torchrun`` (several CPU ranks over gloo) its ``RANK``/``WORLD_SIZE``/``MASTER_*`` are kept, so FSDP
    really shards the model, as on several GPUs.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(VERL_ENGINE_DEVICE="cuda", VERL_ENGINE_VENDOR="nvidia")
    platform_manager.set_platform(PlatformCPU())
    fsdp_init_utils._check_module_states_for_sync_module_states = lambda module_states: None
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
