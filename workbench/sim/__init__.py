"""The local simulated fleet: a broker and real agent processes on this machine.

Example:
    $ workbench up --devices 3
    $ workbench status
    $ workbench down
"""

from workbench.sim._launcher import DEFAULT_PROFILES, device_ids, down, status, up
from workbench.sim._rundir import RunDir, default_run_dir

__all__ = ["DEFAULT_PROFILES", "RunDir", "default_run_dir", "device_ids", "down", "status", "up"]
