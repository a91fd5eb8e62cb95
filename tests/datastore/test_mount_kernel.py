"""The kernel read-ahead a mount asks for: bigger FUSE requests for sequential readers (see ``_fuse_kernel``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aml_identity.datastore import mount
from aml_identity.datastore._fuse_kernel import KERNEL_READ_AHEAD_BYTES, backing_device, raise_read_ahead

_MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 0:41 / /mnt/my\\040data rw,nosuid,nodev,relatime - fuse.aml-identity aml-identity:acct/c rw\n"
    "41 22 0:42 / /mnt/other rw - fuse.rclone az: rw\n"
)


def _fake_system(tmp_path: Path, read_ahead_kb: int) -> tuple[str, Path]:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(_MOUNTINFO)
    knob = tmp_path / "bdi" / "0:41" / "read_ahead_kb"
    knob.parent.mkdir(parents=True)
    knob.write_text(f"{read_ahead_kb}\n")
    return str(mountinfo), knob


def test_the_mounts_device_is_found_in_mountinfo_even_with_a_space_in_its_path(tmp_path):
    mountinfo, _ = _fake_system(tmp_path, 128)
    assert backing_device("/mnt/my data", mountinfo) == "0:41"
    assert backing_device("/mnt/other", mountinfo) == "0:42"
    assert backing_device("/mnt/none", mountinfo) is None


def test_a_small_kernel_read_ahead_is_raised_and_a_bigger_one_is_left_alone(tmp_path):
    mountinfo, knob = _fake_system(tmp_path, 128)
    bdi = str(tmp_path / "bdi")
    assert raise_read_ahead("/mnt/my data", bdi_root=bdi, mountinfo=mountinfo) == KERNEL_READ_AHEAD_BYTES // 1024
    assert int(knob.read_text()) == KERNEL_READ_AHEAD_BYTES // 1024
    knob.write_text("16384\n")  # an administrator's bigger setting stays
    assert raise_read_ahead("/mnt/my data", bdi_root=bdi, mountinfo=mountinfo) == 16384
    assert int(knob.read_text()) == 16384
    assert raise_read_ahead("/mnt/none", bdi_root=bdi, mountinfo=mountinfo) is None  # not mounted: nothing


@pytest.mark.azurite
@pytest.mark.fuse
def test_a_mount_reads_ahead_further_than_the_kernel_default_when_run_as_root(storage_job, store):
    if os.geteuid() != 0:
        pytest.skip("only root may raise a device's read-ahead")
    store.seed({"data/a.bin": b"a"})
    with mount(store.uri("data/")) as m:
        device = m.path.stat().st_dev
        knob = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
        assert int(knob.read_text()) == KERNEL_READ_AHEAD_BYTES // 1024
        assert (m.path / "a.bin").read_bytes() == b"a"
