"""The environment half of a BenchmarkRecord: package versions and hardware."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from saekit.schemas import Hardware
from saekit.schemas.version import __version__


def package_versions() -> dict[str, str]:
    """saekit, torch, triton, transformers, safetensors, sae-lens versions, CUDA and Python."""
    import torch

    out = {"saekit": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for dist in ("triton", "transformers", "safetensors", "numpy", "sae-lens", "gguf"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    return out


def _cpu_name() -> str | None:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def hardware(device: str) -> Hardware:
    import torch

    cuda = driver = None
    name = "cpu"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
        cuda = torch.version.cuda
        try:
            import subprocess

            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            ).stdout.split("\n")[0].strip() or None
        except (OSError, subprocess.SubprocessError):
            driver = None
    return Hardware(device=name, cpu=_cpu_name(), cuda=cuda, driver=driver)


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def env_summary() -> dict[str, Any]:
    return {"platform": platform.platform(), "torch_threads": torch_threads()}
