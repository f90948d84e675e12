"""Small disks for tests (imported as ``disks``): a tmpfs of a few MiB and a ballast file.

Mounting needs root, as ``make test`` runs; :func:`small_disks` unmounts
everything it mounted when the block ends (lazily if a process still holds it).
"""

from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

MIB = 1 << 20


@contextlib.contextmanager
def small_disks(size_mib: int):
    """Yields ``mount(path)``: a ``size_mib`` tmpfs at ``path`` (created if needed)."""
    if os.geteuid() != 0:  # fail, naming why: a skip would hide that the disk-full tests never ran
        pytest.fail("mounting a tmpfs needs root: run make test as root, as CI does", pytrace=False)
    mounted = []

    def mount(path):
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", path], check=True)
        mounted.append(path)
        return path

    try:
        yield mount
    finally:
        for path in reversed(mounted):
            if subprocess.run(["umount", path]).returncode != 0:
                subprocess.run(["umount", "-l", path], check=False)


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def take_space(path: str, leave: int) -> str:
    """Fill ``path``'s filesystem with a ballast file until ``leave`` bytes are free (0: all); its path."""
    ballast = os.path.join(path, "ballast")
    chunk = b"\0" * MIB
    with open(ballast, "ab", buffering=0) as f:
        try:
            while free_bytes(path) > leave:
                f.write(chunk[: min(len(chunk), free_bytes(path) - leave)])
        except OSError:
            pass  # the disk is full: what was asked for when leave == 0
    return ballast
