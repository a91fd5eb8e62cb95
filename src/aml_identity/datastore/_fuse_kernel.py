"""The kernel's side of a mount: how far it reads ahead of a sequential reader, and so how big its requests are.

Measured here (``python -m bench mount``, profile in ``docs/performance.md``): with the kernel's defaults a
FUSE file system gets every read as 128 KiB requests, at most two in flight, whatever the reader asks for
(``dd bs=1M`` included): the backing device's read-ahead (``/sys/class/bdi/MAJ:MIN/read_ahead_kb``) is 128 KiB
and FUSE's ``max_readahead`` can only lower it. A 64 MiB file is then 512 round trips between the kernel and
this process, each a wake-up of a FUSE thread and a ctypes call into Python; on a busy machine those wake-ups,
not the network, set the pace. With a bigger read-ahead the kernel sends 1 MiB requests (FUSE's ``max_pages``
limit, which libfuse 3 negotiates) and keeps several in flight: 64 round trips for the same file.

Only root may write ``read_ahead_kb``; elsewhere (or in a container whose ``/sys`` is read-only) the mount
keeps the kernel's default and says so once at debug level: it works, with more, smaller requests.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

__all__ = ["KERNEL_READ_AHEAD_BYTES", "backing_device", "raise_read_ahead"]

_log = logging.getLogger("aml_identity.mount")

# The kernel's read-ahead window for the mount: 4 MiB keeps four 1 MiB requests in flight for one sequential
# reader, enough to overlap the kernel round trips with the block fetches (which read 32 MiB ahead on their
# own, see _fuse_read.READ_AHEAD_BLOCKS), while a random 4 KiB reader over-reads at most one block it already
# has in memory. rclone's --max-read-ahead (128 KiB by default) is the same knob, capped by the same default.
KERNEL_READ_AHEAD_BYTES = 4 * 1024 * 1024
_MOUNTINFO = "/proc/self/mountinfo"
_BDI_ROOT = "/sys/class/bdi"


def _unescape(field: str) -> str:
    r"""Undo mountinfo's octal escapes (``\040`` for a space, ``\134`` for a backslash)."""
    if "\\" not in field:
        return field
    out, index = [], 0
    while index < len(field):
        code = field[index + 1 : index + 4]
        if field[index] == "\\" and len(code) == 3 and code.isdigit():  # noqa: PLR2004 - three octal digits
            out.append(chr(int(code, 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def backing_device(mount_point: str, mountinfo: str = _MOUNTINFO) -> str | None:
    """Return the ``MAJ:MIN`` device of the mount on ``mount_point`` (the last one mounted there), or None.

    Read from ``/proc/self/mountinfo``, never by ``stat`` of the mount point: that would be a FUSE request, and
    this runs while the file system is still answering the kernel's ``init``.
    """
    found = None
    with contextlib.suppress(OSError), open(mountinfo, encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == mount_point:  # noqa: PLR2004 - mountinfo's 5th field
                found = fields[2]
    return found


def raise_read_ahead(
    mount_point: str, nbytes: int = KERNEL_READ_AHEAD_BYTES, *, bdi_root: str = _BDI_ROOT, mountinfo: str = _MOUNTINFO
) -> int | None:
    """Set the mount's kernel read-ahead to ``nbytes`` if it is smaller; return the value now in force (KiB).

    Returns:
        The read-ahead in KiB, or None when the mount's device could not be found.
    """
    device = backing_device(mount_point, mountinfo)
    if device is None:
        _log.debug("kernel read-ahead: %s is not in %s; leaving the default", mount_point, mountinfo)
        return None
    knob = Path(bdi_root, device, "read_ahead_kb")
    try:
        current = int(knob.read_text().strip())
    except (OSError, ValueError):
        _log.debug("kernel read-ahead: %s cannot be read; leaving the default", knob)
        return None
    wanted = nbytes // 1024
    if current >= wanted:
        return current
    try:
        knob.write_text(f"{wanted}\n")
    except OSError as exc:
        _log.debug(
            "kernel read-ahead stays at %d KiB: %s is not writable (%s; only root may raise it)",
            current, knob, exc.strerror,
        )  # fmt: skip
        return current
    _log.debug("kernel read-ahead of %s raised from %d to %d KiB", mount_point, current, wanted)
    return wanted
