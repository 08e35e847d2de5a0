"""`leasestore who-holds` without a daemon: the holders recorded on disk, their hosts judged by
a watch of the delta sectors, and unreadable leases reported, never shown as free. (The daemon's
view is tested with real daemons in test_daemon_real.py.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from leasestore import daemonless, direct, ownership
from leasestore.cli.main import main
from leasestore.errors import StorageError
from leasestore.ondisk.dblock import MODE_FLAG_SHARED, Dblock, ModeBlock, encode_dblock_sector
from leasestore.ondisk.geometry import pad_sector
from leasestore.ondisk.leader import Leader, decode_leader, encode_delta_sector
from leasestore.testing.procs import make_file
from leasestore.units import MiB

SS = 512
VM1, VM2 = 1 * MiB, 2 * MiB


def _write(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _leader(path: str, offset: int) -> Leader:
    with open(path, "rb") as f:
        f.seek(offset)
        return decode_leader(f.read(SS))


def _host(path: str, host_id: int, name: str, generation: int, timestamp: int) -> None:
    """Host host_id's delta sector as its daemon would leave it (io_timeout 1 s)."""
    first = _leader(path, 0)
    leader = dataclasses.replace(first, owner_id=host_id, owner_generation=generation,
                                 timestamp=timestamp, resource_name=name, io_timeout=1)
    _write(path, (host_id - 1) * SS, encode_delta_sector(leader, SS))


def _owned(path: str, offset: int, host_id: int, generation: int, lver: int) -> None:
    leader = dataclasses.replace(_leader(path, offset), owner_id=host_id,
                                 owner_generation=generation, timestamp=77, lver=lver)
    _write(path, offset, pad_sector(leader.encode(), SS))


def _shared(path: str, offset: int, host_id: int, generation: int) -> None:
    sector = encode_dblock_sector(Dblock(lver=1), SS, ModeBlock(MODE_FLAG_SHARED, generation))
    _write(path, offset + (host_id + 1) * SS, sector)


@pytest.fixture
def disk(lease_file: str) -> str:
    direct.format_lockspace(lease_file, "LS", 0, io_timeout_s=1)
    direct.format_resource(lease_file, "LS", "vm1", VM1)
    direct.format_resource(lease_file, "LS", "vm2", VM2)
    _host(lease_file, 2, "host-b", 3, 1000)
    _host(lease_file, 5, "host-e", 1, 2000)
    _owned(lease_file, VM1, 2, 3, 4)
    _shared(lease_file, VM2, 2, 3)
    _shared(lease_file, VM2, 5, 1)
    return lease_file


def _who(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, Any]]]:
    code = main(["who-holds", *argv, "--no-daemon", "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_owner_and_shared_holders_with_their_names(disk: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, leases = _who([disk, "--watch", "0"], capsys)
    assert code == 0
    assert [(x["resource"], x["lver"]) for x in leases] == [("vm1", 4), ("vm2", 0)]
    owner, = leases[0]["holders"]
    assert (owner["host_id"], owner["generation"], owner["shared"]) == (2, 3, False)
    assert owner["host"]["host_name"] == "host-b" and owner["host"]["state"] == "unknown"
    assert owner["host"]["source"] == "disk" and owner["gone"] is None
    assert [(h["host_id"], h["shared"], h["host"]["host_name"]) for h in leases[1]["holders"]] \
        == [(2, True, "host-b"), (5, True, "host-e")]


def test_a_watch_tells_a_renewing_host_from_a_stale_one(disk: str) -> None:
    def host_b_renews(seconds: float) -> None:
        assert seconds == 5
        _host(disk, 2, "host-b", 3, 1002)

    views = ownership.watch_hosts(disk, 0, "LS", [2, 5], 5, sleep=host_b_renews)
    assert (views[2].state, views[2].renewed_ago_s) == ("live", 5)
    assert (views[5].state, views[5].renewed_ago_s) == ("stale", None)
    short = ownership.watch_hosts(disk, 0, "LS", [5], 2, sleep=lambda s: None)
    assert short[5].state == "unknown"  # 2 s is not longer than its 2 s renewal interval
    assert ownership.watch_needed_s([1, 10]) == 22  # 2 x 10 s, and two more


def test_a_holder_whose_host_rebooted_or_left_is_gone(disk: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _host(disk, 2, "host-b", 4, 50)  # host_id 2 acquired again: generation 4
    _host(disk, 5, "host-e", 1, 0)  # host_id 5 released
    code, leases = _who([disk, "--watch", "0"], capsys)
    assert code == 0
    assert leases[0]["holders"][0]["gone"] == "its host_id was acquired again (generation 4)"
    assert [h["gone"] for h in leases[1]["holders"]] == [
        "its host_id was acquired again (generation 4)", "its host_id was released"]


def test_one_resource_by_name_and_its_table(disk: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["who-holds", "-r", f"LS:vm1:{disk}:{VM1}", "--watch", "0", "--no-daemon"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["RESOURCE", "LOCKSPACE", "AT", "LVER", "HOLDER", "HOST", "STATE",
                              "LAST", "RENEWAL"]
    assert "2 'host-b' gen 3 exclusive" in out[1] and "unknown (disk)" in out[1]
    assert main(["who-holds", "-r", f"LS:vm9:{disk}:{VM1}", "--no-daemon"]) == 1
    assert "is lease 'vm1' of lockspace 'LS', not 'vm9'" in capsys.readouterr().err


def test_an_unreadable_leader_is_an_error_never_free(disk: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with open(disk, "r+b") as f:
        f.seek(VM1 + 100)
        byte = f.read(1)
        f.seek(VM1 + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    code, leases = _who(["-r", f"LS:vm1:{disk}:{VM1}"], capsys)
    assert code == 1
    assert "checksum" in leases[0]["error"] and "holders" not in leases[0]


def test_a_lease_that_cannot_be_read_is_an_entry_and_the_others_still_show(
        disk: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Two of three disks missing: no majority, reported as the lease's error. In a range,
    a read error on one lease leaves the listing of the others whole."""
    gone = [str(tmp_path / name) for name in ("b", "c")]
    code, leases = _who(["-r", f"LS:vm1:{disk}:{VM1}:{gone[0]}:{VM1}:{gone[1]}:{VM1}"], capsys)
    assert code == 1
    assert "disks" in leases[0]["error"] and "holders" not in leases[0], leases
    real = daemonless.lease_holdings

    def eio_at_vm1(disks: Any) -> Any:
        if disks[0][1] == VM1:
            raise StorageError(f"{disks[0][0]}: read: Input/output error")
        return real(disks)

    monkeypatch.setattr(daemonless, "lease_holdings", eio_at_vm1)
    code, leases = _who([disk, "--watch", "0"], capsys)
    assert code == 1
    assert "Input/output error" in leases[0]["error"]
    assert leases[1]["resource"] == "vm2" and len(leases[1]["holders"]) == 2


def test_without_a_lockspace_area_the_hosts_are_unknown_and_s_finds_it(
        disk: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = make_file(tmp_path / "other.img", 4 * MiB)
    direct.format_resource(other, "LS", "vm3", VM1)
    _owned(other, VM1, 5, 1, 2)
    assert main(["who-holds", other, "--no-daemon", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["holders"][0]["host"] is None
    assert "no area of lockspace 'LS'" in captured.err and "give -s" in captured.err
    code, leases = _who([other, "-s", f"LS:0:{disk}:0", "--watch", "0"], capsys)
    assert code == 0 and leases[0]["holders"][0]["host"]["host_name"] == "host-e"


def test_dump_names_the_hosts_of_leaders_and_dblocks(disk: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dump", disk, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    leader = next(r for r in records if r["kind"] == "paxos" and r["resource"] == "vm1")
    assert (leader["owner_id"], leader["owner_name"]) == (2, "host-b")
    dblocks = [(r["host_id"], r["owner_name"]) for r in records
               if r["kind"] == "dblock" and r["resource"] == "vm2"]
    assert dblocks == [(2, "host-b"), (5, "host-e")]
    assert main(["dump", disk]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-1] == "host"
    assert any(" paxos " in line and line.endswith("host-b") for line in table)
