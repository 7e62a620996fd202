"""Find (or install) a Jupyter kernel that runs this very Python, so notebooks see this venv's packages."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from workbench.errors import ConfigError

KERNEL_NAME = "edge-workbench"
# jupyter_client swaps these argv[0] names for the Python it runs in.
_SELF_NAMES = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}


def _runs_here(argv: list[str]) -> bool:
    if not argv:
        return False
    if argv[0] in _SELF_NAMES:
        return True
    # Compare the bin directory, not resolved files: a venv's python links to the system one.
    return Path(argv[0]).absolute().parent == Path(sys.executable).absolute().parent


def kernel_for_this_python(kernel_name: str | None = None) -> str:
    """The name of a kernel that runs ``sys.executable``; install one into ``sys.prefix`` if none does.

    With ``kernel_name`` given, check that it exists and return it as is (the caller chose it).

    Example:
        >>> kernel_for_this_python()   # doctest: +SKIP
        'python3'
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    if kernel_name is not None:
        try:
            manager.get_kernel_spec(kernel_name)
        except NoSuchKernel:
            known = ", ".join(sorted(manager.find_kernel_specs())) or "none"
            raise ConfigError(f"no Jupyter kernel named {kernel_name!r} (installed: {known}); "
                              "leave kernel_name unset to use this Python") from None
        return kernel_name
    for name in ("python3", KERNEL_NAME):
        try:
            if _runs_here(manager.get_kernel_spec(name).argv):
                return name
        except NoSuchKernel:
            pass
    # A user-wide python3 kernel points elsewhere: give this venv a kernel of its own.
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name=f"Edge Workbench ({sys.prefix})", prefix=sys.prefix)
    return KERNEL_NAME


@functools.cache
def ipc_kernel_manager() -> type:
    """A kernel manager whose kernels talk over Unix sockets in the user's runtime dir, not loopback TCP.

    Over TCP every kernel warns that its traffic is unencrypted (six warnings per `workbench demo`),
    and any local user could connect to its ports; Unix sockets are private to the user.

    Example:
        >>> ipc_kernel_manager().transport.default_value   # doctest: +SKIP
        'ipc'
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

    return IPCKernelManager
