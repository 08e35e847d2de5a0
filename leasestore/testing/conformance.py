"""The public conformance suite every lock-manager backend must pass.

`check_lock_manager(target)` runs the proposal's scenarios with real VM processes (forked
children, each holding its locks itself) and the calling process as the VM manager. Every
operation goes through a fresh short-lived manager, as a VM manager would use them:
exclusive / shared / read-only semantics, a dead VM's locks freed, start (register only),
pause (release -> state) and resume (acquire with state), restrict, disk hotplug and unplug,
the manager restarting while the VM runs, and migration hand-over (with the version check
for backends that use state).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from leasestore.plugin.api import (
    AcquireFlags,
    Capability,
    LockBusy,
    LockDriver,
    LockManager,
    OperationDenied,
    ResourceFlags,
    ResourceType,
    StateMismatch,
)

RESPONSE_TIMEOUT_S = 60.0


@dataclass
class ConformanceTarget:
    """What the suite needs from a backend under test."""

    driver: Callable[[], LockDriver]
    """A fresh driver (called again to model a manager restart)."""
    disk: Callable[[str], str]
    """A disk path, by a short name, that this backend can lock."""
    lease: Callable[[str], tuple[str, dict[str, Any]]] | None = None
    """If set, scenarios lock named leases instead of disks: short name -> (key, params with
    lockspace, path, offset)."""

    def add_to(self, manager: LockManager, ref: str, flags: ResourceFlags) -> None:
        if self.lease is None:
            manager.add_resource(ResourceType.DISK, ref, flags)
        else:
            key, params = self.lease(ref)
            manager.add_resource(ResourceType.LEASE, key, flags, params)


class VmProcess:
    """A child process standing for one VM. It runs operations on fresh managers on request."""

    def __init__(self, target: ConformanceTarget, name: str) -> None:
        self.uuid = uuid.uuid4()
        self.name = name
        self._conn, child = multiprocessing.get_context("fork").Pipe()
        self.proc = multiprocessing.get_context("fork").Process(
            target=_vm_main, args=(target, child), daemon=True)
        self.proc.start()
        self.pid = self.proc.pid or 0

    def run(self, op: str, disks: list[tuple[str, ResourceFlags]], **kwargs: Any) -> Any:
        self._conn.send((op, disks, kwargs, str(self.uuid), self.name))
        if not self._conn.poll(RESPONSE_TIMEOUT_S):
            raise AssertionError(f"VM {self.name} did not answer {op}")
        status, value = self._conn.recv()
        if status == "err":
            raise value
        return value

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.join(10)

    def stop(self) -> None:
        if self.proc.is_alive():
            self._conn.send(None)
            self.proc.join(10)
        self.kill()


def _vm_main(target: ConformanceTarget, conn: multiprocessing.connection.Connection) -> None:
    driver = target.driver()
    while True:
        message = conn.recv()
        if message is None:
            return
        op, disks, kwargs, vm_uuid, name = message
        try:
            manager = driver.new(vm_uuid, name, 1, os.getpid(),
                                 started=kwargs.pop("started", False))
            for ref, flags in disks:
                target.add_to(manager, ref, flags)
            conn.send(("ok", getattr(manager, op)(**kwargs)))
            manager.free()
        except Exception as exc:
            conn.send(("err", exc))


def _expect(exc_type: type[Exception], call: Callable[[], Any], what: str) -> None:
    try:
        call()
    except exc_type:
        return
    raise AssertionError(f"{what}: expected {exc_type.__name__}")


def _poll(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _can_lock(vm: VmProcess, disk: str) -> bool:
    try:
        vm.run("acquire", [(disk, ResourceFlags(0))])
    except LockBusy:
        return False
    vm.run("release", [(disk, ResourceFlags(0))])
    return True


EX, SH, RO = ResourceFlags(0), ResourceFlags.SHARED, ResourceFlags.READONLY


def check_lock_manager(target: ConformanceTarget) -> list[str]:
    """Run every scenario; returns their names. Raises AssertionError on the first failure."""
    driver = target.driver()
    scenarios: list[tuple[str, Callable[..., None]]] = [
        ("exclusive refused beside exclusive", _exclusive),
        ("shared beside shared, not beside exclusive", _shared),
        ("read-only takes no lock", _readonly),
        ("a dead VM's locks are free again", _vm_death),
        ("start, pause with state, resume", _pause_resume),
        ("restrict", _restrict),
        ("disk hotplug and unplug", _hotplug),
        ("manager restart while the VM runs", _manager_restart),
        ("migration hand-over", _migration),
    ]
    done = []
    for name, scenario in scenarios:
        vms = [VmProcess(target, f"vm-{i}") for i in range(3)]
        try:
            scenario(target, driver, *vms)
        except AssertionError as exc:
            raise AssertionError(f"{driver.name}: {name}: {exc}") from exc
        finally:
            for vm in vms:
                vm.stop()
        done.append(name)
    return done


def _exclusive(t: ConformanceTarget, d: LockDriver, a: VmProcess, b: VmProcess,
               c: VmProcess) -> None:
    disk = t.disk("excl")
    a.run("acquire", [(disk, EX)])
    _expect(LockBusy, lambda: b.run("acquire", [(disk, EX)]), "second exclusive")
    _expect(LockBusy, lambda: c.run("acquire", [(disk, SH)]), "shared beside exclusive")
    a.run("release", [(disk, EX)])
    assert _can_lock(b, disk), "lock not free after release"


def _shared(t: ConformanceTarget, d: LockDriver, a: VmProcess, b: VmProcess,
            c: VmProcess) -> None:
    disk = t.disk("shared")
    a.run("acquire", [(disk, SH)])
    b.run("acquire", [(disk, SH)])
    _expect(LockBusy, lambda: c.run("acquire", [(disk, EX)]), "exclusive beside shared")
    a.run("release", [(disk, SH)])
    b.run("release", [(disk, SH)])
    assert _can_lock(c, disk)


def _readonly(t: ConformanceTarget, d: LockDriver, a: VmProcess, b: VmProcess,
              c: VmProcess) -> None:
    disk = t.disk("ro")
    a.run("acquire", [(disk, RO)])
    b.run("acquire", [(disk, EX)])
    c.run("acquire", [(disk, RO)])
    b.run("release", [(disk, EX)])


def _vm_death(t: ConformanceTarget, d: LockDriver, a: VmProcess, b: VmProcess,
              c: VmProcess) -> None:
    disk = t.disk("death")
    a.run("acquire", [(disk, EX)])
    assert not _can_lock(b, disk)
    a.kill()
    _poll(lambda: _can_lock(b, disk), 30, "the dead VM's lock to be freed")


def _holds_nothing(d: LockDriver, vm: VmProcess, other: VmProcess, disk: str) -> bool:
    """Whether vm holds no lock on disk, asked without moving a state backend's lease version
    (taking the lease to find out would make the VM's own state stale)."""
    if Capability.USES_STATE in d.capabilities:
        manager = d.new(vm.uuid, vm.name, 1, vm.pid, started=True)
        try:
            return manager.inquire() is None
        finally:
            manager.free()
    return _can_lock(other, disk)


def _pause_resume(t: ConformanceTarget, d: LockDriver, a: VmProcess, b: VmProcess,
                  c: VmProcess) -> None:
    disk = t.disk("pause")
    a.run("acquire", [(disk, EX)], flags=AcquireFlags.REGISTER_ONLY)
    assert _holds_nothing(d, a, b, disk), "register-only locked something"
    a.run("acquire", [(disk, EX)])
    state = a.run("release", [(disk, EX)])
    if Capability.USES_STATE in d.capabilities:
        assert state is not None and ":" in state, f"no state from release: {state!r}"
    else:
        assert state is None
    assert _holds_nothing(d, a, b, disk), "paused VM still locks"
    a.run("acquire", [(disk, EX)], state=state)
    assert not _can_lock(b, disk), "resumed VM does not lock"


def _restrict(t: ConformanceTarget, d: LockDriver, a: VmProcess, b: VmProcess,
              c: VmProcess) -> None:
    disk = t.disk("restrict")
    a.run("acquire", [(disk, EX)], flags=AcquireFlags.RESTRICT)
    _expect(OperationDenied, lambda: a.run("release", [(disk, EX)]), "release after restrict")
    assert not _can_lock(b, disk)


def _hotplug(t: ConformanceTarget, d: LockDriver, a: VmProcess, b: VmProcess,
             c: VmProcess) -> None:
    boot, extra = t.disk("boot"), t.disk("hotplug")
    a.run("acquire", [(boot, EX)])
    a.run("acquire", [(extra, EX)], started=True)  # attach: a manager with only the new disk
    assert not _can_lock(b, extra)
    a.run("release", [(extra, EX)], started=True)  # detach
    assert _can_lock(b, extra)
    assert not _can_lock(b, boot), "unplug released the other disk"


def _manager_restart(t: ConformanceTarget, d: LockDriver, a: VmProcess, b: VmProcess,
                     c: VmProcess) -> None:
    disk = t.disk("restart")
    a.run("acquire", [(disk, EX)])
    fresh = t.driver()  # the manager process restarted: a new driver, new managers
    manager: LockManager = fresh.new(a.uuid, a.name, 1, a.pid, started=True)
    state = manager.inquire()
    manager.free()
    if Capability.USES_STATE in fresh.capabilities:
        assert state is not None and ":" in state, "state lost across a manager restart"
    assert not _can_lock(b, disk), "locks lost across a manager restart"


def _migration(t: ConformanceTarget, d: LockDriver, a: VmProcess, b: VmProcess,
               c: VmProcess) -> None:
    disk = t.disk("migrate")
    a.run("acquire", [(disk, EX)])
    state = a.run("release", [(disk, EX)])  # source paused for the hand-over
    if Capability.USES_STATE not in d.capabilities:
        _expect(OperationDenied, lambda: b.run("acquire", [(disk, EX)], state="x:y:/z:0:1"),
                "a state given to a backend that does not use state")
        b.run("acquire", [(disk, EX)])
        assert not _can_lock(c, disk)
        return
    assert state is not None
    c.run("acquire", [(disk, EX)])  # someone else takes the lease meanwhile...
    c.run("release", [(disk, EX)])
    _expect(StateMismatch, lambda: b.run("acquire", [(disk, EX)], state=state),
            "a migration state whose lver moved")
    a.run("acquire", [(disk, EX)])
    state = a.run("release", [(disk, EX)])
    b.run("acquire", [(disk, EX)], state=state)  # the destination resumes with a fresh state
    assert not _can_lock(c, disk)
