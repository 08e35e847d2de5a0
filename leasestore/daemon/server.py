"""The daemon: a Unix-socket server over the host's lockspaces.

Threads: the accept loop (caller of `serve_forever`), one per client connection, one renewal
thread per lockspace, and a monitor that every second fails expired lockspaces and pets the
watchdog only while every lockspace is healthy. A malformed or failing request gets an error
reply; no request can take the daemon down. The caller's identity comes from SO_PEERCRED.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from leasestore import __version__, removal
from leasestore.clock import lease_now_s
from leasestore.daemon import commands, sanlock_proto
from leasestore.daemon import holders as holder_record
from leasestore.daemon.config import DaemonConfig
from leasestore.daemon.metrics import DaemonMetrics, Snapshot, host_state_counts
from leasestore.daemon.sanlock_server import SanlockFrontEnd, sanlock_socket_path
from leasestore.daemon.supervisor import Supervisor, monitor_interval_s
from leasestore.daemon.watchdog import NoWatchdog, Watchdog, open_watchdog
from leasestore.effects import Algorithm
from leasestore.errors import (
    AcquireLver,
    HostLeaseExpired,
    LeaseNotHeld,
    LeasestoreError,
    LockspaceBusy,
    LockspaceExists,
    LockspaceNotJoined,
    NotRegistered,
    PermissionDenied,
    UsageError,
)
from leasestore.lockspace import Lockspace, LockspaceState, ReceivedEvent, RenewalRecord
from leasestore.resource import ResourceKey, ResourceService
from leasestore.specs import LockspaceSpec
from leasestore.storage.odirect import DirectDevice
from leasestore.storage.runner import DeviceRunner
from leasestore.timeouts import UNPUBLISHED_FIRE_TIMEOUT_S, Timeouts

log = logging.getLogger(__name__)
MAX_CONNECTIONS = 1000
USED_LOG_INTERVAL_S = 200.0
"""How often a removal waiting for a lockspace marked used says so (sanlock: about 200 s)."""
SOCKET_MODE = 0o660
LSFLAG_ADD = 1
LSFLAG_REM = 2


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int

    @classmethod
    def of(cls, conn: socket.socket) -> Peer:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return cls(pid, uid, gid)


@dataclass
class Session:
    """One client connection. Once registered it is the process's lease context: its leases
    (held in the ResourceService under its pid) are released when the connection closes (the
    process exited or gave up)."""

    peer: Peer
    registered: bool = False
    closed: bool = False
    killpath: list[str] = field(default_factory=list)
    killpath_pid: bool = True
    """Whether the holder's pid is appended to the killpath's arguments."""
    restrict: int = 0
    """sanlock RESTRICT_* flags set on this connection."""
    owner_name: str = ""
    """The display name a sanlock ACQUIRE's options gave the process."""
    released: dict[ResourceKey, int] = field(default_factory=dict)
    """The lver at which this registration released each exclusive lease it held."""
    keys: set[ResourceKey] = field(default_factory=set)
    """The leases acquired through this registration: released when it ends. (The lease table
    knows holders by pid; a process may register more than one connection.)"""
    process: holder_record.HolderProcess | None = None
    command_active: bool = False
    """A lease command (ACQUIRE, RELEASE, INQUIRE, KILLPATH) for this registration is running;
    another one for it, sent on another connection, is refused with -EBUSY as sanlock does."""


def notify_systemd(message: str) -> None:
    """sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, if set."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)


def _check_run_dir(run_dir: str) -> None:
    """The run dir holds the socket other processes trust: it must be a real directory of ours
    (or root's) that no one else may write to. Raises UsageError."""
    info = os.lstat(run_dir)
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"run dir {run_dir} is not a directory (a symlink?)")
    if info.st_uid not in (0, os.geteuid()):
        raise UsageError(f"run dir {run_dir} is owned by uid {info.st_uid}; refusing to use it")
    if info.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
        raise UsageError(f"run dir {run_dir} is group- or world-writable; refusing to use it")


def _listen(path: str) -> socket.socket:
    """A fresh listening socket at path, mode SOCKET_MODE, accepting with a 0.5 s timeout."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, SOCKET_MODE)
    if stat.S_IMODE(os.lstat(path).st_mode) != SOCKET_MODE:
        raise UsageError(f"socket {path} did not take mode {SOCKET_MODE:o}")
    listener.listen(64)
    listener.settimeout(0.5)
    return listener


class Daemon:
    def __init__(self, config: DaemonConfig,
                 open_device: Callable[[str], DirectDevice] = DirectDevice) -> None:
        self.config = config
        self._open_device = open_device
        self.lockspaces: dict[str, Lockspace] = {}
        self._removing: set[str] = set()
        self._lock = threading.Lock()
        self._used: set[str] = set()
        """Lockspaces an application marked used (sanlock's set_config USED): their removal
        waits until they are marked unused again."""
        self._used_by_orphans: set[str] = set()
        """Lockspaces whose removal waits while they have orphans (USED_BY_ORPHANS)."""
        self._used_changed = threading.Condition(self._lock)
        self.event_listeners: dict[str, list[socket.socket]] = {}
        """Per lockspace, the connections registered for host events (REG_EVENT), at most
        MAX_EVENT_LISTENERS each."""
        self._shutdown = threading.Event()
        self._connections = 0
        self.started_s = time.monotonic()
        self.watchdog: Watchdog = NoWatchdog()
        """Opened by `open`, once no holder of an earlier daemon is left alive."""
        self._holder_record = holder_record.HolderRecord(config.run_dir)
        self._record_lock = threading.Lock()
        self.resources = ResourceService(open_device, on_holders_changed=self._record_holders)
        self.supervisor = Supervisor(self._stop_pid)
        self.metrics = DaemonMetrics(self._metrics_snapshot)
        self._registered: dict[int, list[Session]] = {}
        """Each registered pid's live registrations, oldest first."""
        self._listener: socket.socket | None = None
        self._front_end = SanlockFrontEnd(self)
        self._pid_file: int | None = None
        self.version = __version__
        self.stopped = threading.Event()
        """Set once shutdown has stopped every holder and lockspace."""

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        return sanlock_socket_path(self.config.run_dir)

    def open(self) -> None:
        """Prepare the run dir, take its lock, bind the socket. Raises UsageError on conflict."""
        run_dir = self.config.run_dir
        try:
            os.makedirs(run_dir, mode=0o755, exist_ok=True)
            _check_run_dir(run_dir)
            self._pid_file = os.open(os.path.join(run_dir, commands.PID_FILE_NAME),
                                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(self._pid_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"another leasestore daemon is running in {run_dir}") from None
            os.ftruncate(self._pid_file, 0)
            os.write(self._pid_file, f"{os.getpid()}\n".encode())
        except OSError as exc:
            raise UsageError(f"run dir {run_dir}: {exc.strerror or exc}") from None
        self._end_previous_holders()
        self.watchdog = open_watchdog(self.config.watchdog, self.config.watchdog_fire_timeout)
        try:
            self._listener = _listen(self.socket_path)
        except OSError as exc:
            raise UsageError(f"socket {self.socket_path}: {exc.strerror or exc}") from None
        if self.config.metrics_address:
            self.metrics.serve(self.config.metrics_address)
        if self.config.metrics_textfile:
            self.metrics.keep_textfile(self.config.metrics_textfile)

    def _metrics_snapshot(self) -> Snapshot:
        with self._lock:
            lockspaces = list(self.lockspaces.values())
        held = list(self.resources.held.values())
        return Snapshot(
            lockspace_states={ls.name: str(ls.state) for ls in lockspaces},
            leases=[(h.key[0], h.lease.shared) for h in held],
            host_states={ls.name: host_state_counts(h.state.label for h in ls.hosts())
                         for ls in lockspaces if ls.table is not None},
            watchdog_armed=not isinstance(self.watchdog, NoWatchdog))

    def _renewal_recorded(self, lockspace: str, record: RenewalRecord) -> None:
        if record.error:
            self.metrics.renewal_failed(lockspace)
        else:
            self.metrics.renewed(lockspace, record.read_us / 1e6, record.write_us / 1e6)

    def _end_previous_holders(self) -> None:
        """Kill the lease holders an earlier daemon on this run dir left running (it died
        without stopping them). Until they are gone the watchdog stays closed: if the earlier
        daemon had armed it, it fires before other hosts may take those holders' leases."""
        killed = DeviceRunner({}).run(holder_record.ending_previous_holders(
            self._holder_record, holder_record.HostProcesses(), holder_record.EXIT_WAIT_S))
        if killed:
            log.warning("an earlier daemon left lease holders; killed pids %s",
                        ", ".join(str(h.pid) for h in killed))

    def _record_holders(self) -> None:
        """Write the record of processes holding or acquiring leases (see holders.py); the
        resource service calls this whenever that set changes."""
        with self._record_lock:
            recorded_pids = self.resources.recorded_pids()
            with self._lock:
                holding = {s.process for s in self._registrations()
                           if s.process is not None and s.peer.pid in recorded_pids}
            self._holder_record.write(holding)
        with self._used_changed:  # orphans may have gone: a removal may wait for that
            self._used_changed.notify_all()

    def serve_forever(self) -> None:
        if self._listener is None:
            self.open()
        assert self._listener is not None
        monitor = threading.Thread(target=self._monitor, name="monitor", daemon=True)
        monitor.start()
        log.info("leasestore daemon %s: host name %s, socket %s, watchdog %s", __version__,
                 self.config.host_name, self.socket_path, self.watchdog.describe())
        if self.config.watchdog_fire_timeout > UNPUBLISHED_FIRE_TIMEOUT_S:
            log.warning("watchdog_fire_timeout %g s is above sanlock's %g s: sanlock hosts in "
                        "these lockspaces would judge this host dead before its watchdog fires",
                        self.config.watchdog_fire_timeout, UNPUBLISHED_FIRE_TIMEOUT_S)
        if isinstance(self.watchdog, NoWatchdog):
            log.warning("watchdog none: nothing resets this host if the daemon hangs or dies, "
                        "or its storage stalls while a holder ignores SIGKILL; such holders may "
                        "run on after other hosts have taken their leases (host_dead)")
        notify_systemd("READY=1")
        try:
            self._accept_loop(self._listener)
        finally:
            self._close()
            monitor.join(2)

    def shutdown(self) -> None:
        self._shutdown.set()
        with self._used_changed:
            self._used_changed.notify_all()

    def _close(self) -> None:
        notify_systemd("STOPPING=1")
        with self._lock:
            lockspaces = list(self.lockspaces.values())
        for lockspace in lockspaces:  # no acquire starts now (removal.py)
            self.resources.gate.close(lockspace.name)
        stuck = {ls.name for ls in lockspaces if not self._remove_holders(ls)}
        for lockspace in lockspaces:
            if lockspace.name in stuck:
                log.error("lockspace %s keeps its host lease: holders did not exit",
                          lockspace.name)
                continue
            lockspace.stop(wait=False)
        for lockspace in lockspaces:
            if lockspace.name not in stuck:
                lockspace.stop(wait=True, timeout_s=lockspace.timeouts.io_timeout_s * 4)
        healthy = not stuck and all(not ls.is_running() for ls in lockspaces)
        self.watchdog.close(clean=healthy)
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
        self.resources.close()
        with self._record_lock:
            self._holder_record.close()
        if self._pid_file is not None:
            os.close(self._pid_file)
        self.metrics.stop()
        if self.config.metrics_textfile:
            with contextlib.suppress(OSError):
                self.metrics.write_textfile(self.config.metrics_textfile)
        log.info("leasestore daemon stopped")
        self.stopped.set()

    # -- monitor -------------------------------------------------------------------------------

    def _monitor(self) -> None:
        interval_s = monitor_interval_s(self.config.watchdog_fire_timeout)
        while not self._shutdown.wait(interval_s):
            with self._lock:
                lockspaces = list(self.lockspaces.values())
            if self.supervisor.tick(lease_now_s(), lockspaces, self._holder_pids_in):
                self.watchdog.pet()

    # -- connections ---------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._shutdown.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._shutdown.is_set():
                    return
                raise
            self._accept(conn)

    def _accept(self, conn: socket.socket) -> None:
        with self._lock:
            if self._connections >= MAX_CONNECTIONS:
                conn.close()
                log.warning("refused a connection: %d connections open", self._connections)
                return
            self._connections += 1
        threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        """Run one connection's protocol loop; whatever ends it, end its session after."""
        session: Session | None = None
        try:
            session = Session(Peer.of(conn))
            self._front_end.serve(conn, session)
        except OSError:
            return
        finally:
            conn.close()
            if session is not None:
                self._end_session(session)
            with self._lock:
                self._connections -= 1

    def _require_admin(self, peer: Peer, what: str = "change lockspaces") -> None:
        if peer.uid not in (0, os.geteuid()):
            raise PermissionDenied(f"uid {peer.uid} may not {what}")

    # -- lockspace commands --------------------------------------------------------------------

    def _add_lockspace(self, cmd: commands.AddLockspace, session: Session) -> None:
        peer = session.peer
        self._require_admin(peer)
        spec = LockspaceSpec(cmd.lockspace, cmd.host_id, cmd.path, cmd.offset)
        timeouts = Timeouts(cmd.io_timeout or self.config.io_timeout,
                            self.config.watchdog_fire_timeout)
        with self._lock:
            if cmd.lockspace in self.lockspaces:
                raise LockspaceExists(f"lockspace {cmd.lockspace!r} is already added")
            self.resources.gate.reopen(cmd.lockspace)
            lockspace = Lockspace(spec, self.config.host_name, timeouts,
                                  history_size=self.config.renewal_history_size,
                                  on_request=self._on_request, open_device=self._open_device,
                                  on_renewal=functools.partial(self._renewal_recorded,
                                                               spec.name),
                                  on_event=self._deliver_event)
            self.lockspaces[cmd.lockspace] = lockspace
        log.info("add_lockspace %s (pid %d uid %d)", spec, peer.pid, peer.uid)
        lockspace.start()
        if cmd.wait:
            try:
                lockspace.wait_joined()
            except LeasestoreError:
                self._forget(lockspace)
                raise

    def _forget(self, lockspace: Lockspace) -> None:
        with self._lock:
            if self.lockspaces.get(lockspace.name) is lockspace:
                del self.lockspaces[lockspace.name]
                self._used.discard(lockspace.name)
                self._used_by_orphans.discard(lockspace.name)
                listeners = self.event_listeners.pop(lockspace.name, [])
            else:
                listeners = []
        for listener in listeners:
            listener.close()

    def _find(self, cmd: commands.LockspaceCommand) -> Lockspace:
        """The named lockspace, which must have been added with the same host_id/path/offset."""
        lockspace = self._named(cmd.lockspace)
        spec = lockspace.spec
        if (spec.host_id, spec.path, spec.offset_b) != (cmd.host_id, cmd.path, cmd.offset):
            raise UsageError(f"lockspace {cmd.lockspace!r} was added as {spec}")
        return lockspace

    def _rem_lockspace(self, cmd: commands.RemLockspace, session: Session) -> None:
        """Leave a lockspace. No acquire in it starts once removal begins, and those under way
        end first, so the holders found then are all there are; they are killed (SIGKILL, as
        sanlock does), their leases released, and only then is the host_id given up. With
        `unused`, held leases refuse the removal instead (LockspaceBusy)."""
        peer = session.peer
        self._require_admin(peer)
        lockspace = self._find(cmd)
        with self._lock:
            if lockspace.name in self._removing:
                raise LockspaceBusy(f"lockspace {lockspace.name!r} is already being removed")
            self._removing.add(lockspace.name)
        try:
            DeviceRunner({}).run(removal.shutting_out(self.resources, lockspace.name, cmd.unused))
        except LockspaceBusy:
            with self._lock:
                self._removing.discard(lockspace.name)
            raise
        log.info("rem_lockspace %s (pid %d uid %d)", lockspace.spec, peer.pid, peer.uid)

        def remove() -> None:
            try:
                self._wait_until_unused(lockspace.name)
                if self._remove_holders(lockspace):
                    lockspace.stop(wait=True)
                    self._forget(lockspace)
                else:
                    log.error("lockspace %s keeps its host lease: its holders did not exit",
                              lockspace.name)
                    raise LockspaceBusy(f"lockspace {lockspace.name!r}: lease holders did not "
                                        "exit; the host lease is kept")
            finally:
                with self._lock:
                    self._removing.discard(lockspace.name)

        if cmd.wait:
            remove()
        else:
            threading.Thread(target=remove, daemon=True).start()

    def set_used(self, name: str, used: bool, by_orphans: bool = False) -> None:
        """Mark lockspace `name` used by an application (its removal waits) or unused; with
        `by_orphans`, whether its removal waits while it has orphans. LockspaceNotJoined if it
        is not added; HostLeaseExpired if marking used a lockspace whose host lease is gone."""
        lockspace = self._named(name)
        if used and lockspace.state not in (LockspaceState.JOINING, LockspaceState.HELD,
                                            LockspaceState.RENEWAL_FAILING):
            raise HostLeaseExpired(f"lockspace {name!r} is {lockspace.state}")
        marked = self._used_by_orphans if by_orphans else self._used
        with self._used_changed:
            if used:
                marked.add(name)
            else:
                marked.discard(name)
            self._used_changed.notify_all()

    def release_orphans(self, name: str, resource: str = "") -> int:
        """Release the orphans of lockspace `name` (that of `resource` only, if given) on
        disk; returns how many there were. An unknown lockspace has none."""
        with self._lock:
            lockspace = self.lockspaces.get(name)
        if lockspace is None:
            return 0
        released = 0
        for orphan in self.resources.orphans(name, resource):
            try:
                released += self.resources.release_orphan(lockspace, orphan.key)
            except LeasestoreError as exc:  # retried in the background; it is no orphan now
                released += 1
                log.warning("release of the orphan %s: %s", orphan.key[1], exc)
        return released

    def _deliver_event(self, lockspace: Lockspace, received: ReceivedEvent) -> None:
        """Send an event another host sent us to this lockspace's listeners (non-blocking,
        as sanlock does; a listener that cannot take it is dropped)."""
        event = received.event
        message = sanlock_proto.encode_event_cb(
            received.host_id, event.generation, event.event, event.data,
            received.from_host_id, received.from_generation)
        with self._lock:
            listeners = list(self.event_listeners.get(lockspace.name, []))
        dropped = []
        for listener in listeners:
            try:
                listener.send(message, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except OSError:
                dropped.append(listener)
        log.info("lockspace %s: event %d (data %d) from host %d to %d listener(s)",
                 lockspace.name, event.event, event.data, received.from_host_id,
                 len(listeners) - len(dropped))
        if dropped:
            self.drop_event_listeners(lockspace.name, dropped)

    def drop_event_listeners(self, name: str, listeners: list[socket.socket]) -> None:
        with self._lock:
            kept = self.event_listeners.get(name, [])
            self.event_listeners[name] = [c for c in kept if c not in listeners]
        for listener in listeners:
            listener.close()

    def _in_use(self, name: str) -> bool:
        """Whether removal of `name` must wait (call with _lock held)."""
        return name in self._used or (name in self._used_by_orphans
                                      and bool(self.resources.orphans(name)))

    def _wait_until_unused(self, name: str) -> None:
        with self._used_changed:
            while self._in_use(name) and not self._shutdown.is_set():
                if self._used_changed.wait(USED_LOG_INTERVAL_S) or self._shutdown.is_set():
                    continue
                log.warning("lockspace %s is marked used: its removal waits", name)

    def _remove_holders(self, lockspace: Lockspace) -> bool:
        """Both steps of removal.py for `lockspace`: False if holders remain (the host lease
        must be kept)."""
        name = lockspace.name

        def kill(pid: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

        return self.resources.run(self._removing_holders(name, kill))

    def _removing_holders(self, name: str, kill: Callable[[int], None]) -> Algorithm[bool]:
        yield from removal.shutting_out(self.resources, name)
        wait_s = holder_record.EXIT_WAIT_S + 4 * self._named(name).timeouts.io_timeout_s
        return (yield from removal.ending_holders(
            self.resources, self._named(name), lambda: self._holder_pids_in(name), kill, wait_s))

    def _inq_lockspace(self, cmd: commands.InqLockspace, session: Session) -> bool | None:
        try:
            lockspace = self._find(cmd)
        except LockspaceNotJoined:
            return False
        if cmd.wait:
            with contextlib.suppress(LeasestoreError):
                lockspace.wait_joined()
        if lockspace.name in self._removing:
            return None
        state = lockspace.state
        if state == LockspaceState.JOINING:
            return None
        return state in (LockspaceState.HELD, LockspaceState.RENEWAL_FAILING)

    def _lockspace_info(self, lockspace: Lockspace) -> dict[str, Any]:
        spec = lockspace.spec
        flags = LSFLAG_ADD if lockspace.state == LockspaceState.JOINING else 0
        if lockspace.name in self._removing:
            flags |= LSFLAG_REM
        now_s = lease_now_s()
        return {
            "lockspace": spec.name, "host_id": spec.host_id, "path": spec.path,
            "offset": spec.offset_b, "flags": flags, "state": str(lockspace.state),
            "generation": lockspace.generation, "io_timeout": lockspace.timeouts.io_timeout_s,
            "valid_for_s": round(lockspace.valid_until_s - now_s, 3)
            if lockspace.last_success_s else None,
            "error": str(lockspace.error) if lockspace.error else None,
        }

    def _lockspace_infos(self) -> list[dict[str, Any]]:
        with self._lock:
            lockspaces = list(self.lockspaces.values())
        return [self._lockspace_info(ls) for ls in lockspaces]

    def _named(self, name: str) -> Lockspace:
        with self._lock:
            lockspace = self.lockspaces.get(name)
        if lockspace is None:
            raise LockspaceNotJoined(f"lockspace {name!r} is not added")
        return lockspace

    def _status(self, cmd: commands.Status, session: Session) -> dict[str, Any]:
        lockspaces = self._lockspace_infos()
        return {
            "pid": os.getpid(), "version": __version__, "host_name": self.config.host_name,
            "run_dir": self.config.run_dir, "watchdog": self.watchdog.describe(),
            "watchdog_pets": self.watchdog.pets,
            "uptime_s": round(time.monotonic() - self.started_s, 3),
            "connections": self._connections, "lockspaces": lockspaces,
            "leases": [h.to_json() for h in self.resources.held.values()],
        }

    # -- registration and resource leases ----------------------------------------------------

    def _register(self, cmd: commands.Register, session: Session) -> dict[str, int]:
        """Make this connection a registration of its process. A process may register several
        connections (as with sanlock); a command for its pid acts on the oldest."""
        pid = session.peer.pid
        with self._lock:
            if session.registered:
                return {"pid": pid}
            session.registered = True
            session.process = holder_record.holder(pid)
            self._registered.setdefault(pid, []).append(session)
        log.info("registered pid %d (uid %d)", pid, session.peer.uid)
        return {"pid": pid}

    def _also_through_another(self, registration: Session, key: ResourceKey) -> bool:
        """Whether another live registration of the same process holds this lease too (a
        shared lease two registrations joined): then releasing it here is bookkeeping only
        (call with _lock held)."""
        return any(other is not registration and not other.closed and key in other.keys
                   for other in self._registered.get(registration.peer.pid, ()))

    def _registration(self, pid: int) -> Session | None:
        """The oldest live registration of pid (call with _lock held)."""
        return next((s for s in self._registered.get(pid, ()) if not s.closed), None)

    def _registrations(self) -> list[Session]:
        """Every live registration (call with _lock held)."""
        return [s for sessions in self._registered.values() for s in sessions if not s.closed]

    def _target(self, session: Session, pid: int) -> Session:
        """The registration a command acts for: this connection's (pid 0, or its own pid when
        it is registered), or (root only) the oldest registration of `pid`."""
        if pid == 0 or (pid == session.peer.pid and session.registered):
            if not session.registered:
                raise NotRegistered(f"pid {session.peer.pid} is not registered on this "
                                    "connection (call register first)")
            return session
        self._require_admin(session.peer, f"act for pid {pid}")
        with self._lock:
            target = self._registration(pid)
        if target is None:
            raise NotRegistered(f"pid {pid} is not registered")
        return target

    def _acquire(self, cmd: commands.Acquire, session: Session) -> dict[str, object]:
        started = time.monotonic()
        try:
            result = self._acquiring(cmd, session)
        except LeasestoreError as exc:
            self.metrics.lease_done("acquire", cmd.lockspace, time.monotonic() - started, exc)
            raise
        self.metrics.lease_done("acquire", cmd.lockspace, time.monotonic() - started, None)
        return result

    def _acquiring(self, cmd: commands.Acquire, session: Session) -> dict[str, object]:
        target = self._target(session, cmd.pid)
        lockspace = self._named(cmd.lockspace)
        key: ResourceKey = (cmd.lockspace, cmd.resource, cmd.path, cmd.offset)
        self.resources.use_disks(key, cmd.extra_disks)
        with self._lock:
            shared_already = self.resources.holding(key, target.peer.pid)
            if (cmd.shared and shared_already is not None and shared_already.lease.shared
                    and key not in target.keys):
                # Another registration of this process holds it shared: this one joins it.
                target.keys.add(key)
                return shared_already.to_json()
        # The service records the holder before its first I/O (a daemon dying now leaves one).
        lver, implied = self._required_version(cmd, target, key, by_pid=target is not session)
        with self.resources.gate.admit(cmd.lockspace):
            # Admitted until the lease is in this registration: removal waits for that, then
            # stops the holders.
            try:
                held = self.resources.acquire(lockspace, key, target.peer.pid,
                                              shared=cmd.shared, lver=lver, lvb=cmd.lvb,
                                              persistent=cmd.persistent, adopt=cmd.adopt,
                                              owner_nowait=cmd.owner_nowait)
            except AcquireLver as exc:
                if not implied:
                    raise
                raise AcquireLver(
                    f"{cmd.resource!r} is no longer at version {lver}, at which pid "
                    f"{target.peer.pid} released it: another holder had it meanwhile "
                    "(pass the version to take it anyway)") from exc
            with self._lock:
                gone = target.closed
                if not gone:  # from now on, the end of this registration releases it
                    target.keys.add(key)
        if gone:  # the holder exited while we acquired for it
            self._release_quietly(key, target.peer.pid)
            raise NotRegistered(f"pid {target.peer.pid} exited during the acquire")
        log.info("pid %d acquired %s", target.peer.pid, held.state)
        return held.to_json()

    def _required_version(self, cmd: commands.Acquire, target: Session, key: ResourceKey,
                          by_pid: bool) -> tuple[int | None, bool]:
        """(the lver the lease must be at, whether only reacquire_needs_same_version asks it:
        for an acquire by pid of a lease that registration released before)."""
        if cmd.lver >= 0:
            return cmd.lver, False
        released = target.released.get(key)
        if (released is None or cmd.shared or not by_pid
                or not self.config.reacquire_needs_same_version):
            return None, False
        return released, True

    def _release(self, cmd: commands.Release, session: Session) -> None:
        started = time.monotonic()
        try:
            self._releasing(cmd, session)
        except LeasestoreError as exc:
            self.metrics.lease_done("release", cmd.lockspace, time.monotonic() - started, exc)
            raise
        self.metrics.lease_done("release", cmd.lockspace, time.monotonic() - started, None)

    def _releasing(self, cmd: commands.Release, session: Session) -> None:
        target = self._target(session, cmd.pid)
        key: ResourceKey = (cmd.lockspace, cmd.resource, cmd.path, cmd.offset)
        held = self.resources.holding(key, target.peer.pid)
        if held is None or key not in target.keys:
            raise LeaseNotHeld(f"pid {target.peer.pid} does not hold {cmd.resource!r} "
                               "through this registration")
        with self._lock:
            if self._also_through_another(target, key):
                target.keys.discard(key)
                return
        try:
            self.resources.release(self._named(cmd.lockspace), key, target.peer.pid,
                                   cmd.rename)
        finally:
            with self._lock:
                if self.resources.holding(key, target.peer.pid) is None:
                    target.keys.discard(key)
                    if not held.lease.shared:
                        target.released[key] = held.lease.lver
        log.info("pid %d released %s", target.peer.pid, held.state)

    def _request(self, cmd: commands.RequestRelease, session: Session) -> dict[str, int]:
        lockspace = self._named(cmd.lockspace)
        key: ResourceKey = (cmd.lockspace, cmd.resource, cmd.path, cmd.offset)
        self.resources.use_disks(key, cmd.extra_disks)
        owner = self.resources.request(lockspace, key, None if cmd.lver < 0 else cmd.lver,
                                       cmd.force_mode)
        if owner and owner != lockspace.spec.host_id:
            lockspace.flag_host(owner)
        elif owner:
            threading.Thread(target=self._examine, args=(lockspace,), daemon=True).start()
        log.info("request %s force_mode %d: owner host %d", cmd.resource, cmd.force_mode, owner)
        return {"owner": owner}

    def _on_request(self, lockspace: Lockspace) -> None:
        """Called on the renewal thread: another host flagged us. Examine off that thread."""
        threading.Thread(target=self._examine, args=(lockspace,), daemon=True).start()

    def _examine(self, lockspace: Lockspace) -> None:
        """Act on requests recorded against leases we hold in this lockspace: stop every local
        holder of each lease asked for (SIGKILL, or gracefully for force_mode 2)."""
        for held, record in self.resources.pending_requests(lockspace.name):
            for pid in sorted(held.pids):
                with self._lock:
                    session = self._registration(pid)
                if session is None:
                    continue
                log.warning("request for %s (lver %d, mode %d): stopping pid %d", held.key[1],
                            record.lver, record.force_mode, pid)
                self._stop_holder(session, graceful=record.force_mode == 2)

    def _stop_holder(self, session: Session, graceful: bool) -> None:
        """Run the holder's killpath (graceful, if it set one) or signal it: SIGTERM when
        graceful, else SIGKILL, each swapped for the other if the holder restricted it."""
        if graceful and session.killpath:
            pid_arg = [str(session.peer.pid)] if session.killpath_pid else []
            log.warning("running the killpath of pid %d: %s", session.peer.pid,
                        " ".join([*session.killpath, *pid_arg]))
            with contextlib.suppress(OSError):
                subprocess.Popen([*session.killpath, *pid_arg],
                                 stdin=subprocess.DEVNULL, start_new_session=True)
            self.metrics.holder_signalled("killpath")
            return
        sig = signal.SIGTERM if graceful else signal.SIGKILL
        if sig == signal.SIGKILL and session.restrict & sanlock_proto.RESTRICT_SIGKILL:
            sig = signal.SIGTERM
        elif sig == signal.SIGTERM and session.restrict & sanlock_proto.RESTRICT_SIGTERM:
            sig = signal.SIGKILL
        with contextlib.suppress(ProcessLookupError):
            os.kill(session.peer.pid, sig)
            self.metrics.holder_signalled(sig.name)

    def _release_quietly(self, key: ResourceKey, pid: int) -> None:
        with self._lock:
            lockspace = self.lockspaces.get(key[0])
        self.resources.release_after_exit(lockspace, key, pid)

    def _end_session(self, session: Session) -> None:
        """A connection closed. If it was a registration, the leases acquired through it are
        released (a process's other connections, registered or not, keep theirs)."""
        pid = session.peer.pid
        with self._lock:
            session.closed = True
            if not session.registered:
                return
            remaining = [s for s in self._registered.get(pid, ()) if s is not session]
            if remaining:
                self._registered[pid] = remaining
            else:
                self._registered.pop(pid, None)
            leases = [h.key for h in self.resources.held_by(pid) if h.key in session.keys
                      and not any(h.key in other.keys for other in remaining)]
        for key in leases:
            self._release_quietly(key, session.peer.pid)
        if leases:
            log.info("pid %d left; released %d lease(s)", session.peer.pid, len(leases))

    # -- supervision -------------------------------------------------------------------------

    def _holders_in(self, name: str) -> list[Session]:
        holder_pids = self.resources.holder_pids(name)
        with self._lock:
            return [s for s in self._registrations() if s.peer.pid in holder_pids]

    def _holder_pids_in(self, name: str) -> list[int]:
        return [session.peer.pid for session in self._holders_in(name)]

    def _stop_pid(self, pid: int, graceful: bool) -> None:
        with self._lock:
            session = self._registration(pid)
        if session is not None:
            self._stop_holder(session, graceful)
