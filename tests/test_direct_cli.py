"""`leasestore direct`: the daemon-less verbs, checked against the real sanlock. read_leader
prints what `sanlock direct read_leader` prints for the same area, byte for byte; a host lease
and a resource lease taken without a daemon are what sanlock reads back; a daemon-less acquire
never takes a lease that a live sanlock host holds; records that do not verify are errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from leasestore import direct
from leasestore.testing.procs import SanlockProc, make_file, poll

LS = "dls"
MiB = 1 << 20


def _ours(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leasestore.cli.main", "direct", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def _theirs(sanlock_bin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sanlock_bin, "direct", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def _values(out: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in out.splitlines()[1:])


@pytest.fixture
def area(tmp_path: Path) -> str:
    path = make_file(tmp_path / "leases.img", 4 * MiB)
    direct.format_lockspace(path, LS, 0, io_timeout_s=1)
    direct.format_resource(path, LS, "res1", MiB)
    return path


def test_read_leader_prints_what_sanlock_prints(area: str, sanlock_bin: str) -> None:
    assert _ours("acquire_id", "-s", f"{LS}:2:{area}:0", "-o", "1", "-e", "hostb"
                 ).returncode == 0
    for args, code in ((["-s", f"{LS}:1:{area}:0"], 0),  # as formatted
                       (["-s", f"{LS}:2:{area}:0"], 0),  # acquired by us
                       (["-r", f"{LS}:res1:{area}:{MiB}"], 0),
                       (["-r", f"{LS}:other:{area}:{MiB}"], -227),  # another resource's
                       (["-s", f"xx:1:{area}:0"], -226)):  # another lockspace's
        ours, theirs = _ours("read_leader", *args), _theirs(sanlock_bin, "read_leader", *args)
        assert ours.stdout == theirs.stdout, (args, ours.stdout, theirs.stdout)
        assert ours.stdout.splitlines()[0] == f"read_leader done {code}"
        assert ours.returncode == theirs.returncode == (0 if code == 0 else 1)
        assert ("Traceback" not in ours.stderr) and (bool(ours.stderr) == (code != 0))
    # Uninitialised: both fail with the magic error (sanlock then prints whatever it had).
    args = ["-r", f"{LS}:res1:{area}:{2 * MiB}"]
    ours, theirs = _ours("read_leader", *args), _theirs(sanlock_bin, "read_leader", *args)
    assert ours.stdout == "read_leader done -223\n"
    assert theirs.stdout.splitlines()[0] == "read_leader done -223"
    assert ours.returncode == theirs.returncode == 1
    assert "magic 0x00000000" in ours.stderr and ours.stderr.count("\n") == 1


def test_a_host_lease_and_a_resource_lease_taken_without_a_daemon(area: str,
                                                                   sanlock_bin: str) -> None:
    """acquire_id, renew_id, acquire, release, release_id: each record as sanlock reads it."""
    ls2 = f"{LS}:2:{area}:0"
    res = f"{LS}:res1:{area}:{MiB}"
    assert _ours("next_free", "-s", f"{LS}:0:{area}:0").stdout == "1\n"
    taken = _ours("acquire_id", "-s", ls2, "-o", "1", "-e", "hostb")
    assert taken.returncode == 0, taken.stderr
    first = _values(taken.stdout)
    assert (first["host_id"], first["generation"], first["host_name"]) == ("2", "1", "hostb")
    renewed = _values(_ours("renew_id", "-s", ls2, "-o", "1").stdout)
    assert int(renewed["timestamp"]) >= int(first["timestamp"])
    theirs = _values(_theirs(sanlock_bin, "read_leader", "-s", ls2).stdout)
    assert (theirs["owner_id"], theirs["owner_generation"], theirs["resource_name"],
            theirs["timestamp"]) == ("2", "1", "hostb", renewed["timestamp"])
    acquired = _ours("acquire", "-r", res, "-i", "2")  # the lockspace area found on the disk
    assert acquired.returncode == 0, acquired.stderr
    assert _values(acquired.stdout)["lver"] == "1"
    theirs = _values(_theirs(sanlock_bin, "read_leader", "-r", res).stdout)
    assert (theirs["owner_id"], theirs["owner_generation"], theirs["lver"]) == ("2", "1", "1")
    assert theirs["timestamp"] != "0"
    wrong = _ours("release", "-r", res, "-s", ls2, "-g", "7")  # not the holder's generation
    assert wrong.returncode == 1 and "generation 1, not 7" in wrong.stderr
    assert _ours("release", "-r", res, "-s", ls2).returncode == 0
    assert _values(_theirs(sanlock_bin, "read_leader", "-r", res).stdout)["timestamp"] == "0"
    again = _ours("release", "-r", res, "-s", ls2)
    assert again.returncode == 1 and again.stdout.startswith("release done -251")
    assert "free" in again.stderr
    assert _ours("release_id", "-s", ls2).returncode == 0
    assert _values(_theirs(sanlock_bin, "read_leader", "-s", ls2).stdout)["timestamp"] == "0"
    refused = _ours("acquire", "-r", res, "-i", "2")  # host 2 holds no host lease now
    assert refused.returncode == 1 and "holds no host lease" in refused.stderr


def test_a_daemonless_acquire_never_takes_a_live_sanlock_hosts_lease(
        area: str, sanlock_bin: str, tmp_path: Path) -> None:
    sanlock = SanlockProc(tmp_path, "host1", sanlock_bin)
    holder: subprocess.Popen[bytes] | None = None
    try:
        sanlock.client("add_lockspace", "-s", f"{LS}:1:{area}:0", "-o", "1")
        holder = subprocess.Popen([sanlock_bin, "client", "command", "-r",
                                   f"{LS}:res1:{area}:{MiB}", "-c", "/bin/sleep", "120"],
                                  env=sanlock.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        res = f"{LS}:res1:{area}:{MiB}"
        poll(lambda: direct.read_paxos_leader(area, MiB).owner_id == 1, 30,
             what="sanlock's grant on disk")
        assert _ours("acquire_id", "-s", f"{LS}:2:{area}:0", "-o", "1").returncode == 0
        refused = _ours("acquire", "-r", res, "-i", "2")
        assert refused.returncode == 1, refused.stdout
        assert refused.stdout.startswith("acquire done -243"), refused.stdout
        assert "held by live host 1" in refused.stderr
        assert _values(_theirs(sanlock_bin, "read_leader", "-r", res).stdout)["owner_id"] == "1"
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        sanlock.stop()


@pytest.mark.parametrize("args, message", [
    (["read_id", "-s", "{area}:9:0"], "lockspace must be NAME:HOST_ID:PATH:OFFSET"),
    (["read_id", "-s", "dls:0:{area}:0"], "needs a host_id of 1 or more"),
    (["read_leader", "-s", "dls:3000:{area}:0"], "outside 1..2000"),
    (["acquire_id", "-s", "dls:2:{area}:0", "-o", "0"], "-o must be"),
    (["acquire", "-r", "dls:res1:{area}:1048576", "-i", "2", "-g", "3"],
     "holds no host lease"),
    (["live_id", "-s", "dls:1:{area}:2097152"], "magic 0x00000000"),
])
def test_bad_input_is_one_line(area: str, args: list[str], message: str) -> None:
    done = _ours(*[a.replace("{area}", area) for a in args])
    assert done.returncode in (1, 2), done
    assert message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_write_leader_repairs_a_leader_and_guards_a_held_one(area: str,
                                                              sanlock_bin: str) -> None:
    """write_leader sets fields over a free leader (sanlock reads the result); over a held one,
    one whose checksum is bad, or another lease's, it writes nothing unless forced; forced, it
    keeps the fields that lie there (a checksum repair) and, for a host, the rest of its
    sector (the bitmap)."""
    res = f"{LS}:res1:{area}:{MiB}"
    done = _ours("write_leader", "-r", res, "--set", "lver=7", "--set", "num_hosts=10")
    assert done.returncode == 0, done.stderr
    theirs = _values(_theirs(sanlock_bin, "read_leader", "-r", res).stdout)
    assert (theirs["lver"], theirs["num_hosts"], theirs["timestamp"]) == ("7", "10", "0")
    assert _values(done.stdout) == theirs
    assert _ours("write_leader", "-r", res, "--set", "owner_id=3", "--set", "owner_generation=2",
                 "--set", "timestamp=99").returncode == 0  # still free before this write
    before = Path(area).read_bytes()[MiB:MiB + 512]
    refused = _ours("write_leader", "-r", res, "--set", "timestamp=0")
    assert refused.returncode == 1 and refused.stdout == "write_leader done -17\n"
    assert "held by host 3 generation 2" in refused.stderr and "Traceback" not in refused.stderr
    assert Path(area).read_bytes()[MiB:MiB + 512] == before
    with open(area, "r+b") as f:  # a flipped bit in the resource name: the checksum fails
        f.seek(MiB + 72)
        f.write(b"r")
    assert _ours("read_leader", "-r", res).returncode == 1
    assert "does not verify" in _ours("write_leader", "-r", res).stderr
    forced = _ours("write_leader", "-r", res, "--set", "timestamp=0", "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith("forced: the leader there does not verify")
    repaired = _values(_theirs(sanlock_bin, "read_leader", "-r", res).stdout)
    assert (repaired["lver"], repaired["owner_id"], repaired["resource_name"],
            repaired["timestamp"]) == ("7", "3", "res1", "0")
    # A host's delta leader: the bitmap after it is kept.
    host2 = f"{LS}:2:{area}:0"
    with open(area, "r+b") as f:
        f.seek(512 + 256)
        f.write(b"\x05")
    assert _ours("write_leader", "-s", host2, "--set", "io_timeout=3").returncode == 0
    assert _values(_theirs(sanlock_bin, "read_leader", "-s", host2).stdout)["io_timeout"] == "3"
    assert Path(area).read_bytes()[512 + 256] == 5
    for change, message in (("space_name=x", "cannot set space_name"),
                            ("io_timeout=65536", "does not fit its 16 bits"),
                            ("lver=x", "not a decimal number")):
        bad = _ours("write_leader", "-s", host2, "--set", change, "--force")
        assert bad.returncode != 0 and message in bad.stderr, bad.stderr
        assert bad.stderr.count("\n") == 1


def test_the_resource_index_verbs_do_what_sanlock_direct_does(tmp_path: Path,
                                                              sanlock_bin: str) -> None:
    """format, lookup, update and rebuild -x on two files: the same output and the same bytes
    as `sanlock direct`; each reads the other's index; format refuses a live index."""
    files = {who: make_file(tmp_path / f"{who}.img", 12 * MiB) for who in ("ours", "theirs")}

    def run(who: str, *args: str) -> subprocess.CompletedProcess[str]:
        rx = f"{LS}:{files[who]}:0"
        full = [arg.replace("{RX}", rx) for arg in args]
        return _ours(*full) if who == "ours" else _theirs(sanlock_bin, *full)

    formatted = run("ours", "format", "-x", "{RX}")
    assert formatted.returncode == 0 and formatted.stdout.startswith("format done 0")
    assert run("theirs", "format", "-x", "{RX}").returncode == 0
    for args in (["lookup", "-x", "{RX}"],
                 ["update", "-x", "{RX}", "-e", f"one:{2 * MiB}"],
                 ["update", "-x", "{RX}", "-e", f"two:{4 * MiB}"],
                 ["lookup", "-x", "{RX}"],
                 ["lookup", "-x", "{RX}", "-e", "two"],
                 ["lookup", "-x", "{RX}", "-e", f":{2 * MiB}"],
                 ["lookup", "-x", "{RX}", "-e", f"two:{2 * MiB}"],
                 ["lookup", "-x", "{RX}", "-e", "none"],
                 ["update", "-x", "{RX}", "-e", f"bad:{2 * MiB + 1}"],
                 ["update", "-x", "{RX}", "-e", f"one:{2 * MiB}", "-z", "1"]):
        ours, theirs = run("ours", *args), run("theirs", *args)
        code = theirs.stdout.splitlines()[0]
        assert ours.stdout.splitlines()[0] == code, (args, ours.stdout, theirs.stdout)
        assert ours.returncode == theirs.returncode, (args, ours.stderr)
        if args[0] == "lookup":
            assert ours.stdout == theirs.stdout, args
    for path in files.values():  # a resource in slot 3 (5 MiB) for rebuild to find
        direct.format_resource(path, LS, "found", 5 * MiB)
    assert run("ours", "rebuild", "-x", "{RX}").returncode == 0
    assert run("theirs", "rebuild", "-x", "{RX}").returncode == 0
    # Area 1 (header, entries) and the index lease's leader; sanlock's direct format leaves
    # stack bytes in the lease's request record padding, which nobody reads.
    ours_bytes, theirs_bytes = (Path(files[w]).read_bytes() for w in ("ours", "theirs"))
    assert ours_bytes[:MiB + 512] == theirs_bytes[:MiB + 512]
    crossed = _theirs(sanlock_bin, "lookup", "-x", f"{LS}:{files['ours']}:0", "-e", "found")
    assert crossed.returncode == 0 and f"offset {5 * MiB}" in crossed.stdout
    refused = run("ours", "format", "-x", "{RX}")
    assert refused.returncode == 1 and "use --force" in refused.stderr
