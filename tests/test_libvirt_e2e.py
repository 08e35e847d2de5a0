"""libvirt end to end: unmodified libvirtd + QEMU on two "hosts" (private mount namespaces),
with libvirt's own sanlock lock-driver plugin taking each VM's lease from the lease daemon of
its host, over one shared lease file (LIBVIRT-E2E.md has the recipe): both hosts on
leasestore, and mixed with the real sanlock daemon either way round.

CI sets LEASESTORE_REQUIRE_LIBVIRT=1, so missing packages fail instead of skipping."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from leasestore import client, direct
from leasestore.testing import libvirt
from leasestore.testing.libvirt import (
    LibvirtHost,
    auto_disk_leases_conf,
    domain_xml,
    libvirt_hosts,
)
from leasestore.testing.procs import DaemonProc, LoopDevices, SanlockProc, make_file, poll

pytestmark = [pytest.mark.slow]
MiB = 1 << 20
LS = "LS"
VM1_AT = MiB


class LeaseDaemon(Protocol):
    """What the tests need of a host's lease daemon, whichever it is."""

    @property
    def run_dir(self) -> str: ...

    @property
    def log_path(self) -> Path: ...

    def stop(self) -> None: ...


@dataclass
class Cluster:
    lease_file: str
    kinds: dict[str, str]
    """host name → "leasestore" or "sanlock": whose daemon serves that host's libvirtd"""
    daemons: dict[str, LeaseDaemon]
    hosts: dict[str, LibvirtHost]
    sanlock_bin: str
    on_lockfailure: str | None = None
    """What the VMs' domains ask libvirt to do when their lease is lost."""

    def held_by(self, host: str) -> list[tuple[str, int]]:
        """(resource, pid) of each lease `sanlock client status` shows on that host's daemon
        (the real CLI, against either daemon)."""
        env = {**os.environ, "SANLOCK_RUN_DIR": self.daemons[host].run_dir}
        out = subprocess.run([self.sanlock_bin, "client", "status"], env=env,
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return [(name, int(pid)) for name, pid in
                re.findall(r"^r [^:]+:([^:]+):.* p (\d+)", out, re.M)]

    def lver(self) -> int:
        return direct.read_paxos_leader(self.lease_file, VM1_AT).lver


def _require_libvirt() -> None:
    """Skip where real libvirt hosts cannot run, fail instead when CI requires them."""
    why = libvirt.missing()
    if why is not None:
        if os.environ.get("LEASESTORE_REQUIRE_LIBVIRT") == "1":
            pytest.fail(f"libvirt end to end is required (LEASESTORE_REQUIRE_LIBVIRT=1): {why}")
        pytest.skip(why)


PAIRS = [("leasestore", "leasestore"), ("leasestore", "sanlock"), ("sanlock", "leasestore")]


@pytest.fixture(scope="module", params=PAIRS, ids=["+".join(pair) for pair in PAIRS])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            sanlock_bin: str) -> Iterator[Cluster]:
    _require_libvirt()
    base = tmp_path_factory.mktemp("libvirt")
    lease_file = make_file(base / "leases", 4 * MiB)
    direct.format_lockspace(lease_file, LS, 0, io_timeout_s=1)
    direct.format_resource(lease_file, LS, "vm1", VM1_AT)
    kinds = dict(zip(("host-a", "host-b"), request.param, strict=True))
    daemons: dict[str, LeaseDaemon] = {}
    try:
        for host_id, (name, kind) in enumerate(kinds.items(), start=1):
            if kind == "leasestore":
                ours = DaemonProc(base, name, io_timeout_s=1, watchdog_fire_timeout_s=60)
                daemons[name] = ours
                ours.call(client.add_lockspace, LS, host_id, lease_file, 0)
            else:
                theirs = SanlockProc(base, name, sanlock_bin)
                daemons[name] = theirs
                theirs.client("add_lockspace", "-s", f"{LS}:{host_id}:{lease_file}:0", "-o",
                              "1")
        with libvirt_hosts(base, {n: d.run_dir for n, d in daemons.items()}) as hosts:
            for name, host in hosts.items():
                disk = make_file(base / f"{name}-vm1.img", MiB)  # QEMU locks images itself
                host.define(domain_xml("vm1", disk, (LS, "vm1", lease_file, VM1_AT)))
            yield Cluster(lease_file, kinds, daemons, hosts, sanlock_bin)
    finally:
        for daemon in daemons.values():
            daemon.stop()


def test_a_started_vm_holds_its_lease_and_the_other_host_is_refused(cluster: Cluster) -> None:
    a, b = cluster.hosts["host-a"], cluster.hosts["host-b"]
    before = cluster.lver()
    a.virsh("start", "vm1")
    assert a.state("vm1") == "running"
    assert cluster.held_by("host-a") == [("vm1", a.qemu_pid("vm1"))]
    assert cluster.lver() == before + 1
    refused = b.virsh("start", "vm1", check=False)
    assert refused.returncode != 0 and "Failed to acquire lock" in refused.stderr, refused
    assert b.state("vm1") == "shut off" and cluster.held_by("host-b") == []
    a.virsh("destroy", "vm1")
    poll(lambda: cluster.held_by("host-a") == [], 10, what="A's lease released at destroy")
    b.virsh("start", "vm1")
    assert cluster.lver() == before + 2
    assert cluster.held_by("host-b") == [("vm1", b.qemu_pid("vm1"))]
    b.virsh("destroy", "vm1")
    poll(lambda: cluster.held_by("host-b") == [], 10, what="B's lease released at destroy")


def test_suspend_releases_and_resume_takes_the_lease_again(cluster: Cluster) -> None:
    a, b = cluster.hosts["host-a"], cluster.hosts["host-b"]
    a.virsh("start", "vm1")
    a.virsh("suspend", "vm1")
    assert a.state("vm1") == "paused" and cluster.held_by("host-a") == []
    a.virsh("resume", "vm1")  # nobody held it meanwhile: the same version comes back
    assert a.state("vm1") == "running" and len(cluster.held_by("host-a")) == 1
    a.virsh("suspend", "vm1")
    b.virsh("start", "vm1")  # a paused VM holds no lease: another host may start it
    refused = a.virsh("resume", "vm1", check=False)
    assert refused.returncode != 0 and "Failed to acquire lock" in refused.stderr, refused
    assert a.state("vm1") == "paused"
    b.virsh("destroy", "vm1")
    poll(lambda: cluster.held_by("host-b") == [], 10, what="B's lease released")


def test_a_vm_paused_while_another_host_ran_it_does_not_resume(cluster: Cluster) -> None:
    """Beyond sanlock: B ran (and stopped) the VM while A's copy was paused, so the lease is
    not at the version A released; A's resume is refused, and A's daemon says why."""
    a = cluster.hosts["host-a"]
    assert a.state("vm1") == "paused"  # from the previous test: B ran it meanwhile
    if cluster.kinds["host-a"] != "leasestore":
        # sanlock resumes it (libvirt passes lver 0): the hole this check closes
        a.virsh("resume", "vm1")
        assert a.state("vm1") == "running"
        a.virsh("destroy", "vm1")
        poll(lambda: cluster.held_by("host-a") == [], 10, what="A's lease released")
        return
    refused = a.virsh("resume", "vm1", check=False)
    assert refused.returncode != 0 and "Failed to acquire lock" in refused.stderr, refused
    assert a.state("vm1") == "paused" and cluster.held_by("host-a") == []
    assert "is no longer at version" in cluster.daemons["host-a"].log_path.read_text()
    a.virsh("destroy", "vm1")
    a.virsh("start", "vm1")  # a fresh start is no resume: it takes the current version
    assert len(cluster.held_by("host-a")) == 1
    a.virsh("destroy", "vm1")
    poll(lambda: cluster.held_by("host-a") == [], 10, what="A's lease released")


@pytest.fixture(scope="module", params=PAIRS, ids=["+".join(pair) for pair in PAIRS])
def auto_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 sanlock_bin: str) -> Iterator[Cluster]:
    """Two hosts whose libvirtds run with auto_disk_leases: libvirt makes the lockspace file
    and the disk leases itself, through its host's daemon (ALIGN, WRITE_LOCKSPACE,
    WRITE_RESOURCE, a blocking ADD_LOCKSPACE); host A's libvirtd starts first and formats."""
    _require_libvirt()
    base = tmp_path_factory.mktemp("libvirt-auto")
    shared = base / "sanlock-leases"
    shared.mkdir()
    names = ("host-a", "host-b")
    kinds = dict(zip(names, request.param, strict=True))
    daemons: dict[str, LeaseDaemon] = {}
    try:
        for name, kind in kinds.items():
            daemons[name] = (DaemonProc(base, name, io_timeout_s=1, watchdog_fire_timeout_s=60)
                             if kind == "leasestore" else SanlockProc(base, name, sanlock_bin))
        confs = {name: auto_disk_leases_conf(str(shared), host_id)
                 for host_id, name in enumerate(names, start=1)}
        with libvirt_hosts(base, {n: d.run_dir for n, d in daemons.items()}, confs) as hosts:
            for host in hosts.values():  # the same path on both, a private file on each
                images = host.dir / "lib" / "images"
                images.mkdir(parents=True, exist_ok=True)
                make_file(images / "vm2.img", MiB)
                host.define(domain_xml("vm2", "/var/lib/libvirt/images/vm2.img", None))
            yield Cluster(str(shared / "__LIBVIRT__DISKS__"), kinds, daemons, hosts,
                          sanlock_bin)
    finally:
        for daemon in daemons.values():
            daemon.stop()


def test_auto_disk_leases_are_made_and_kept_exclusive_through_the_daemon(
        auto_cluster: Cluster) -> None:
    a, b = auto_cluster.hosts["host-a"], auto_cluster.hosts["host-b"]
    for host_id, (name, daemon) in enumerate(auto_cluster.daemons.items(), start=1):
        env = {**os.environ, "SANLOCK_RUN_DIR": daemon.run_dir}  # libvirtd joined at start-up
        joined = subprocess.run([auto_cluster.sanlock_bin, "client", "gets"], env=env,
                                capture_output=True, text=True, timeout=30, check=True).stdout
        expected = f"__LIBVIRT__DISKS__:{host_id}:{auto_cluster.lease_file}:0"
        assert joined.split()[:2] == ["s", expected], (name, joined)
    records = direct.dump(auto_cluster.lease_file)
    assert {r.host_id for r in records if r.acquired} == {1, 2}
    a.virsh("start", "vm2")
    key = hashlib.md5(b"/var/lib/libvirt/images/vm2.img").hexdigest()
    assert auto_cluster.held_by("host-a") == [(key, a.qemu_pid("vm2"))]
    lease = Path(auto_cluster.lease_file).with_name(key)
    assert direct.read_paxos_leader(str(lease), 0).lver == 1
    refused = b.virsh("start", "vm2", check=False)
    assert refused.returncode != 0 and "Failed to acquire lock" in refused.stderr, refused
    a.virsh("destroy", "vm2")
    poll(lambda: auto_cluster.held_by("host-a") == [], 10, what="A's disk lease released")
    b.virsh("start", "vm2")
    assert auto_cluster.held_by("host-b") == [(key, b.qemu_pid("vm2"))]
    assert direct.read_paxos_leader(str(lease), 0).lver == 2
    b.virsh("destroy", "vm2")


FIRE_S = 30
"""The smallest watchdog fire timeout with a kill grace (15 s): below 30 s holders are SIGKILLed
at once and no killpath runs. host_dead = 8 × 1 + 30 = 38 s."""


SANLOCK_FIRE_S = 60
"""sanlock's fixed watchdog fire timeout: a cluster with a sanlock host has host_dead 68 s."""
DYING: list[tuple[str, str, str | None]] = [
    ("leasestore", "leasestore", "poweroff"), ("leasestore", "leasestore", "pause"),
    ("leasestore", "leasestore", None),  # no <on_lockfailure>: no killpath, signals
    ("leasestore", "sanlock", "poweroff"), ("sanlock", "leasestore", "poweroff")]


@pytest.fixture(params=DYING, ids=["+".join(str(part) for part in case) for case in DYING])
def dying_cluster(request: pytest.FixtureRequest, tmp_path: Path, loop_devices: LoopDevices,
                  sanlock_bin: str) -> Iterator[Cluster]:
    """Two hosts on two loop devices over one backing file (so host A's storage can turn
    read-only alone), each on leasestore or on the real sanlock as the case says. Host A's
    daemon runs in its libvirtd's namespace, where the killpath libvirt registers
    (libvirt_sanlock_helper) can reach that libvirtd."""
    _require_libvirt()
    kind_a, kind_b, action = request.param
    backing = make_file(tmp_path / "shared.img", 4 * MiB, allocate=True)
    devices = {"host-a": loop_devices.attach(backing), "host-b": loop_devices.attach(backing)}
    direct.format_lockspace(devices["host-a"], LS, 0, io_timeout_s=1)
    direct.format_resource(devices["host-a"], LS, "vm1", VM1_AT)
    a_run = tmp_path / "run-host-a"
    a_log = tmp_path / "host-a.log"
    if kind_a == "leasestore":
        companion = (f"{sys.executable} -m leasestore.cli.main daemon --run-dir {a_run} "
                     f"--host-name host-a --io-timeout 1 --watchdog none "
                     f"--watchdog-fire-timeout {FIRE_S} >> {a_log} 2>&1")
    else:  # SANLOCK_RUN_DIR comes from the namespace's environment (LibvirtHost.start)
        a_run.mkdir()
        companion = (f"SANLOCK_PRIVILEGED=0 {sanlock_bin} daemon -D -w 0 -l 0 -e host-a "
                     f">> {a_log} 2>&1")
    b_daemon: DaemonProc | SanlockProc = (
        DaemonProc(tmp_path, "host-b", io_timeout_s=1, watchdog_fire_timeout_s=FIRE_S)
        if kind_b == "leasestore" else SanlockProc(tmp_path, "host-b", sanlock_bin))
    hosts: dict[str, LibvirtHost] = {}
    pid_file = "leasestore.pid" if kind_a == "leasestore" else "sanlock.pid"
    try:
        hosts["host-a"] = LibvirtHost(tmp_path, "host-a", str(a_run))
        hosts["host-a"].start(companion=companion)
        poll((a_run / "sanlock.sock").exists, 30, what="host A's daemon")
        hosts["host-b"] = LibvirtHost(tmp_path, "host-b", b_daemon.run_dir)
        shutil.copytree(hosts["host-a"].dir / "cache", hosts["host-b"].dir / "cache",
                        dirs_exist_ok=True)
        hosts["host-b"].start()
        for host_id, (name, kind, run_dir) in enumerate(
                (("host-a", kind_a, str(a_run)), ("host-b", kind_b, b_daemon.run_dir)), 1):
            _join(kind, run_dir, host_id, devices[name], sanlock_bin)
        for name, host in hosts.items():
            disk = make_file(tmp_path / f"{name}-vm1.img", MiB)
            host.define(domain_xml("vm1", disk, (LS, "vm1", devices[name], VM1_AT),
                                   on_lockfailure=action))
        a_daemon = _InNamespace(str(a_run), a_log, pid_file)
        yield Cluster(devices["host-a"], {"host-a": kind_a, "host-b": kind_b},
                      {"host-a": a_daemon, "host-b": b_daemon}, hosts, sanlock_bin,
                      on_lockfailure=action)
    finally:
        subprocess.run(["blockdev", "--setrw", devices["host-a"]], check=False)
        for host in reversed(list(hosts.values())):
            host.stop()
        _InNamespace(str(a_run), a_log, pid_file).stop()
        b_daemon.stop()


def _join(kind: str, run_dir: str, host_id: int, device: str, sanlock_bin: str) -> None:
    if kind == "leasestore":
        with client.using(run_dir):
            client.add_lockspace(LS, host_id, device, 0)
        return
    done = subprocess.run([sanlock_bin, "client", "add_lockspace", "-s",
                           f"{LS}:{host_id}:{device}:0", "-o", "1"],
                          env={**os.environ, "SANLOCK_RUN_DIR": run_dir},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _sees_host_1_live(kind: str, run_dir: str) -> bool:
    """Whether this daemon's host table has host 1 live (python3-sanlock for sanlock)."""
    if kind == "leasestore":
        with client.using(run_dir):
            return any(h["host_id"] == 1 and h["state"] == "live"
                       for h in client.get_hosts(LS))
    probe = ("import sanlock, sys\n"
             "try:\n"
             "    hosts = sanlock.get_hosts(sys.argv[1].encode(), 1)\n"
             "except sanlock.SanlockException:  # EAGAIN until its first renewal read\n"
             "    sys.exit(1)\n"
             "sys.exit(0 if hosts and hosts[0]['flags'] == sanlock.HOST_LIVE else 1)\n")
    return subprocess.run(["/usr/bin/python3", "-c", probe, LS],
                          env={**os.environ, "SANLOCK_RUN_DIR": run_dir}, capture_output=True,
                          timeout=30, check=False).returncode == 0


def _last_renewal_s(kind: str, daemon: LeaseDaemon, device: str) -> float:
    """When host A last renewed, on CLOCK_MONOTONIC: from our daemon's renewal history, or
    (sanlock drops a failed lockspace with its history) from the timestamp in A's sector,
    which sanlock writes in CLOCK_MONOTONIC seconds."""
    if kind == "leasestore":
        with client.using(daemon.run_dir):
            history = client.renewal_history(LS)
        return float(max(h["time"] for h in history if not h.get("error")))
    return float(next(r for r in direct.dump(device, 0, MiB) if r.host_id == 1).timestamp)


@dataclass
class _InNamespace:
    """Host A's daemon, started by its libvirtd's namespace shell: found by its pid file."""

    run_dir: str
    log_path: Path
    pid_file: str

    def stop(self) -> None:
        pid_file = Path(self.run_dir) / self.pid_file
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
            poll(lambda: not Path(f"/proc/{pid}").exists(), 30, what="host A's daemon exit")


def test_a_host_whose_storage_fails_powers_its_vm_off_before_another_may_start_it(
        dying_cluster: Cluster) -> None:
    """Host A's storage turns read-only while its VM runs: A's daemon fails the lockspace and
    runs the VM's killpath (libvirt_sanlock_helper ... poweroff or pause), which has libvirt
    destroy or pause the VM, or without <on_lockfailure> signals QEMU, well before host_dead;
    host B is refused while A is live, and starts the VM only once host_dead has passed (its
    acquire may wait for that instead of refusing). Both hosts on leasestore, and mixed with
    the real sanlock either way round."""
    cluster = dying_cluster
    a, b = cluster.hosts["host-a"], cluster.hosts["host-b"]
    kind_a, kind_b = cluster.kinds["host-a"], cluster.kinds["host-b"]
    action = cluster.on_lockfailure
    a.virsh("start", "vm1")
    qemu = a.qemu_pid("vm1")
    assert cluster.held_by("host-a") == [("vm1", qemu)]
    poll(lambda: _sees_host_1_live(kind_b, cluster.daemons["host-b"].run_dir), 30,
         what="B sees A live")  # so that A is live to it, not unknown
    assert b.virsh("start", "vm1", check=False).returncode != 0  # held by a live host
    subprocess.run(["blockdev", "--setro", cluster.lease_file], check=True)
    failed_at = time.monotonic()
    while b.virsh("start", "vm1", check=False).returncode != 0:  # refused, or it waits
        assert time.monotonic() - failed_at < 150, "B never got the lease"
        time.sleep(1)
    started_b = time.monotonic()
    last_renewal = _last_renewal_s(kind_a, cluster.daemons["host-a"], cluster.lease_file)
    fire_s = SANLOCK_FIRE_S if "sanlock" in (kind_a, kind_b) else FIRE_S
    host_dead_s = 8 * 1 + fire_s
    assert started_b - last_renewal >= host_dead_s - 1  # B waited for host_dead (1 s: poll)
    reason = a.virsh("domstate", "vm1", "--reason").stdout.strip()
    if action == "poweroff":
        assert not Path(f"/proc/{qemu}").exists()
        assert reason == "shut off (destroyed)", reason  # by the helper, not a signal
    elif action == "pause":  # paused by the helper (libvirt says "user"), lease released
        assert reason == "paused (user)", reason
        assert cluster.held_by("host-a") == []
    else:  # no killpath: SIGTERM within the kill grace, SIGKILL after it
        assert not Path(f"/proc/{qemu}").exists()
        assert reason.startswith("shut off"), reason
    if kind_a == "leasestore":
        log = cluster.daemons["host-a"].log_path.read_text()
        killpath = f"running the killpath of pid {qemu}: {libvirt.HELPER} qemu:///system"
        assert (killpath in log) == (action is not None), log[-2000:]
        assert f"lockspace {LS} failed: stopping pid {qemu}" in log, log[-2000:]
    b.virsh("destroy", "vm1")
