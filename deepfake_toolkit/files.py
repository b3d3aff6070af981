"""Small file helpers shared by every writer (results, weights, training records), free of torch."""

from __future__ import annotations

import os


def make_readable(path: str | os.PathLike[str]) -> None:
    """Give a freshly written file the usual permissions (0666 less the umask)."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    # Linux reports the umask in /proc without changing it; elsewhere it can only be read by
    # setting it, which briefly affects files other threads create.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask
