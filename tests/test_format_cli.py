"""`leasestore format` and `leasestore dump` on files and loop devices."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from leasestore.cli.main import main
from leasestore.direct import dump, format_lockspace, format_resource
from leasestore.ondisk.leader import decode_leader
from leasestore.testing.procs import make_file

MiB = 1 << 20
GOLDEN_SHA256 = "54655a0b"  # prefix of sanlock's golden.img (lockspace at 0, res1 at 1 MiB)


def test_format_reproduces_sanlock_golden_image(tmp_path: Path) -> None:
    image = make_file(tmp_path / "golden.img", 2 * MiB)
    assert main(["format", "-s", f"golden:0:{image}:0"]) == 0
    assert main(["format", "-r", f"golden:res1:{image}:1048576"]) == 0
    digest = hashlib.sha256(Path(image).read_bytes()).hexdigest()
    assert digest.startswith(GOLDEN_SHA256)


def test_format_refuses_a_live_area_and_writes_nothing(
    lease_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["format", "-s", f"ls:0:{lease_file}:0"]) == 0
    before = Path(lease_file).read_bytes()
    assert main(["format", "-r", f"ls:res:{lease_file}:0"]) == 1
    err = capsys.readouterr().err
    assert "2000 delta record(s) of lockspace 'ls'" in err and "--force" in err
    assert Path(lease_file).read_bytes() == before
    assert main(["format", "-r", f"ls:res:{lease_file}:0", "--force"]) == 0
    assert decode_leader(Path(lease_file).read_bytes()[:512]).resource_name == "res"


def test_format_refuses_an_area_overlapping_a_larger_one(lease_file: str) -> None:
    format_resource(lease_file, "ls", "big", 0, sector_size=4096, align=8 * MiB)
    assert main(["format", "-s", f"ls:0:{lease_file}:1048576"]) == 0  # inside, but no record there
    assert main(["format", "-s", f"other:0:{lease_file}:0"]) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-s", "ls:0:{f}:1000"], "not a multiple of the align size"),
        (["-s", "ls:0:{f}:16777216"], "does not fit"),
        (["-s", "ls:0:{f}:0", "-Z", "512", "-A", "8M"], "invalid sector_size/align_size"),
        (["-s", "ls:0:{f}:0", "-Z", "4096"], "given together"),
        (["-s", "ls:0:{f}"], "NAME:HOST_ID:PATH:OFFSET"),
        (["-s", "ls:0:/nonexistent/x.img:0"], "no such file"),
        (["-r", "ls:{n}:{f}:0"], "longer than 48 bytes"),
    ],
)
def test_format_bad_input_is_a_clear_error(
    lease_file: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    before = Path(lease_file).read_bytes()
    filled = [a.format(f=lease_file, n="x" * 49) for a in args]
    assert main(["format", *filled]) != 0
    assert message in capsys.readouterr().err
    assert Path(lease_file).read_bytes() == before


def test_dump_lists_records_as_json(lease_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    format_lockspace(lease_file, "ls", 0, io_timeout_s=5)
    format_resource(lease_file, "ls", "vm1", MiB)
    capsys.readouterr()
    assert main(["dump", f"{lease_file}", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["offset"], r.get("resource")) for r in records] == [
        ("paxos", MiB, "vm1")
    ]
    assert records[0]["lver"] == 0 and records[0]["owner_id"] == 0
    assert main(["dump", f"{lease_file}:0:1M", "--json", "--all"]) == 0
    all_records = json.loads(capsys.readouterr().out)
    assert len(all_records) == 2000
    assert {r["io_timeout"] for r in all_records} == {5}


def test_dump_reports_a_corrupt_sector_and_fails(
    lease_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    format_lockspace(lease_file, "ls", 0)
    with open(lease_file, "r+b") as f:
        f.seek(3 * 512 + 60)  # inside host 4's lockspace name
        f.write(b"Z")
    capsys.readouterr()
    assert main(["dump", lease_file, "--json"]) == 1
    records = json.loads(capsys.readouterr().out)
    bad = [r for r in records if "error" in r]
    assert len(bad) == 1
    assert bad[0]["offset"] == 1536 and bad[0]["host_id"] == 4
    assert "checksum mismatch" in bad[0]["error"]
    found = dump(lease_file)
    assert sum(1 for r in found if r.error) == 1


def test_dump_sees_a_zeroed_host_sector_as_corrupt(lease_file: str) -> None:
    format_lockspace(lease_file, "ls", 0)
    with open(lease_file, "r+b") as f:
        f.seek(7 * 512)
        f.write(bytes(512))
    bad = [r for r in dump(lease_file) if r.error]
    assert [(r.host_id, "magic" in (r.error or "")) for r in bad] == [(8, True)]


def test_format_and_dump_on_a_loop_device(loop_device: str) -> None:
    assert main(["format", "-s", f"ls:0:{loop_device}:0"]) == 0
    assert main(["format", "-r", f"ls:r1:{loop_device}:1048576"]) == 0
    records = dump(loop_device)
    assert [r.kind for r in records if r.kind != "delta"] == ["paxos"]
    assert sum(1 for r in records if r.kind == "delta") == 2000


def test_many_leases_in_one_command_match_one_by_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bulk = make_file(tmp_path / "bulk.img", 24 * MiB)
    single = make_file(tmp_path / "single.img", 24 * MiB)
    assert main(["format", "-r", f"LS:vm{{}}:{bulk}:{MiB}", "--count", "20",
                 "--num-hosts", "7"]) == 0
    assert "formatted 20 resources 'vm0'..'vm19'" in capsys.readouterr().out
    for i in range(20):
        format_resource(single, "LS", f"vm{i}", (i + 1) * MiB, num_hosts=7)
    assert Path(bulk).read_bytes() == Path(single).read_bytes()


def test_many_leases_refuse_a_range_with_a_record_anywhere_and_write_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = make_file(tmp_path / "leases.img", 12 * MiB)
    format_resource(image, "LS", "kept", 10 * MiB)  # the last slot of the range
    before = Path(image).read_bytes()
    assert main(["format", "-r", f"LS:vm{{}}:{image}:{MiB}", "--count", "10"]) == 1
    err = capsys.readouterr().err
    assert "'kept'" in err and "nothing was written" in err
    assert Path(image).read_bytes() == before
    assert main(["format", "-r", f"LS:vm{{}}:{image}:{MiB}", "--count", "10", "--force"]) == 0
    assert [r.resource for r in dump(image) if r.kind == "paxos"] == [
        f"vm{i}" for i in range(10)]
