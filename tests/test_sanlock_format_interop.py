"""Format compatibility against the real sanlock binary (`sanlock direct init/dump`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from leasestore.cli.main import main
from leasestore.direct import dump
from leasestore.testing.procs import make_file

MiB = 1 << 20

GEOMETRIES = [(512, 1), (4096, 1), (4096, 8)]


def _sanlock(sanlock_bin: str, *args: str) -> str:
    out = subprocess.run([sanlock_bin, "direct", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.sanlock
@pytest.mark.parametrize(("sector", "align_m"), GEOMETRIES, ids=str)
def test_format_is_byte_identical_to_sanlock_init(
    sanlock_bin: str, tmp_path: Path, sector: int, align_m: int
) -> None:
    align = align_m * MiB
    theirs = make_file(tmp_path / "theirs.img", 2 * align)
    ours = make_file(tmp_path / "ours.img", 2 * align)
    geo = ["-Z", str(sector), "-A", f"{align_m}M"]
    _sanlock(sanlock_bin, "init", "-s", f"vm-space:0:{theirs}:0", *geo, "-o", "7")
    _sanlock(sanlock_bin, "init", "-r", f"vm-space:disk-a:{theirs}:{align}", *geo)
    assert main(["format", "-s", f"vm-space:0:{ours}:0", *geo, "-o", "7"]) == 0
    assert main(["format", "-r", f"vm-space:disk-a:{ours}:{align}", *geo]) == 0
    assert Path(ours).read_bytes() == Path(theirs).read_bytes()


@pytest.mark.sanlock
def test_sanlock_dump_reads_our_areas(sanlock_bin: str, tmp_path: Path) -> None:
    ours = make_file(tmp_path / "ours.img", 3 * MiB)
    assert main(["format", "-s", f"ours-ls:0:{ours}:0"]) == 0
    assert main(["format", "-r", f"ours-ls:leaseA:{ours}:1048576"]) == 0
    assert main(["format", "-r", f"ours-ls:leaseB:{ours}:2097152"]) == 0
    lines = _sanlock(sanlock_bin, "dump", ours).splitlines()
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2], r[-1]) for r in rows] == [
        ("01048576", "ours-ls", "leaseA", "0"),
        ("02097152", "ours-ls", "leaseB", "0"),
    ]
    read = _sanlock(sanlock_bin, "read_leader", "-s", f"ours-ls:1:{ours}:0")
    assert "space_name ours-ls" in read and "checksum" in read


@pytest.mark.sanlock
def test_we_dump_areas_sanlock_formatted(sanlock_bin: str, tmp_path: Path) -> None:
    theirs = make_file(tmp_path / "theirs.img", 16 * MiB)
    _sanlock(sanlock_bin, "init", "-s", f"their-ls:0:{theirs}:0", "-Z", "4096", "-A", "8M")
    _sanlock(sanlock_bin, "init", "-r", f"their-ls:lease1:{theirs}:8388608", "-Z", "4096",
             "-A", "8M")
    records = dump(theirs)
    assert not [r for r in records if r.error]
    deltas = [r for r in records if r.kind == "delta"]
    assert len(deltas) == 2000 and {r.sector_size for r in deltas} == {4096}
    paxos = [r for r in records if r.kind == "paxos"]
    assert [(p.offset, p.resource, p.extra["num_hosts"]) for p in paxos] == [
        (8 * MiB, "lease1", 2000)
    ]
    # And our format tool refuses to clobber what sanlock made.
    assert main(["format", "-s", f"mine:0:{theirs}:0", "-Z", "4096", "-A", "8M"]) == 1
