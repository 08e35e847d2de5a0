"""sanlock's client protocol, served on `<run_dir>/sanlock.sock` over the daemon's own core.

Every command ends in the same Daemon operations leasestore's own protocol uses (lockspaces,
registrations, the ResourceService); this module only frames, decodes, maps results to the
codes sanlock replies with, and encodes. Invariants:
- a header that sanlock's daemon would ignore (short, bad magic, unknown major version or
  command, or any message on a RESTRICT_ALL connection) gets no reply and changes nothing;
- payloads are read by struct sizes and counts, never by the header's length; a payload that
  does not arrive within PAYLOAD_TIMEOUT_S is answered with -ENOTCONN, and what a refused
  request still had in flight is drained by its length, so the next header is read in step;
- a registered connection is never closed by us: its leases end when its process closes it
  (or on shutdown, whose holders are killed first);
- every command of sanlock 3.8.5 has a handler; unknown commands are skipped, as 3.8.5
  skips them. Leases on several disks are acquired, requested and formatted on all of them
  (majority rules, paxos.py); READ_RESOURCE and READ_RESOURCE_OWNERS report what a
  majority of them shows (the newest leader, each host's latest dblock copy);
- with LS_DETAIL in cmd_flags (leasestore's own client) the same command gets the same result
  code, and a JSON payload that says what sanlock's binary reply cannot (error class and text,
  µs timings, host names): one protocol, one set of handlers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import leasestore.daemon.sanlock_proto as sp
from leasestore import daemonless, direct, rindex
from leasestore.clock import lease_now_s
from leasestore.daemon import commands, recent_log
from leasestore.daemon.sanlock_proto import Cmd, Header
from leasestore.effects import Algorithm
from leasestore.errors import (
    AreaInUse,
    BadMagic,
    CorruptRecord,
    DeviceMissing,
    HostIdInvalid,
    HostLeaseExpired,
    LeaseAlreadyHeld,
    LeaseNotHeld,
    LeasestoreError,
    LockspaceBusy,
    LockspaceExists,
    LockspaceNotJoined,
    LvbTooLarge,
    NotRegistered,
    ProtocolError,
    StorageError,
    UsageError,
    WrongLockspace,
)
from leasestore.lockspace import Lockspace, LockspaceState
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import Leader, LeaderMagic, decode_leader
from leasestore.ondisk.rindex import (
    DEFAULT_MAX_RESOURCES,
    LEASE_NAME,
    RindexEntry,
    RindexHeader,
)
from leasestore.paxos import SH_RETRIES, Holdings
from leasestore.resource import HeldResource
from leasestore.specs import MAX_PATH_B
from leasestore.storage.odirect import DirectDevice
from leasestore.timeouts import DEFAULT_IO_TIMEOUT_S, Timeouts

if TYPE_CHECKING:
    from leasestore.daemon.server import Daemon, Session

log = logging.getLogger(__name__)
PAYLOAD_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 0.02
MAX_DRAIN_B = 1 << 20
READ_IO_TIMEOUT_S = 10.0


class _Short(Exception):
    """The payload ended (or stalled) before its struct was complete."""


@dataclass
class _Reply:
    code: int = 0
    """sanlock's result: 0, a positive value (ALIGN), a negative errno or SANLK_* code."""
    payload: bytes = b""
    data2: int = 0
    detail: Any = None
    """What an LS_DETAIL reply carries as its result."""
    counted: bool = True
    """Whether the payload is counted in the header's length (STATUS-like streams: not)."""
    raw: bytes | None = None
    """A whole reply sanlock builds other than by echoing the request (VERSION, SHUTDOWN_WAIT)."""
    silent: bool = False
    """No reply at all (REGISTER, SHUTDOWN)."""


class _Refused(Exception):
    """A request refused with sanlock's code for it, and the error it stands for."""

    def __init__(self, code: int, error: LeasestoreError) -> None:
        super().__init__(str(error))
        self.code = code
        self.error = error


MAX_LVB_B = 4096
"""The most bytes SET_LVB takes at all (sanlock's bound; a 512-byte sector holds fewer)."""


def _refuse(code: int, error: type[LeasestoreError], message: str) -> _Refused:
    return _Refused(code, error(message))


QUIET_REFUSALS = frozenset({Cmd.INQUIRE, Cmd.INQ_LOCKSPACE, Cmd.GET_HOSTS, Cmd.READ_LOCKSPACE,
                            Cmd.READ_RESOURCE, Cmd.READ_RESOURCE_OWNERS})
"""Queries whose refusals are answers (libvirt probes registration with INQUIRE -ESRCH)."""

CLOSES_AFTER_REPLY = frozenset({Cmd.SHUTDOWN, Cmd.STATUS, Cmd.LOG_DUMP, Cmd.HOST_STATUS,
                                Cmd.GET_LOCKSPACES, Cmd.GET_HOSTS, Cmd.SHUTDOWN_WAIT,
                                Cmd.END_EVENT, Cmd.SET_CONFIG, Cmd.RENEWAL, Cmd.REG_EVENT})
"""Commands after whose reply sanlock's daemon closes a (one-shot) connection itself (after
REG_EVENT its duplicate stays open as the event channel)."""
MAX_EVENT_LISTENERS = 32


def result_code(exc: LeasestoreError) -> int:
    """What sanlock replies for an error: its own code (negative errno or SANLK_*)."""
    return exc.code if exc.code < 0 else -201


class SanlockFrontEnd:
    """Serves sanlock-protocol connections (one thread each) for `daemon`."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._rindex_lock = threading.Lock()
        """Held by one index change at a time (create, delete, rebuild on this host)."""
        self._handlers: dict[int, Callable[[Header, _Payload, Session], _Reply]] = {
            Cmd.REGISTER: self._register,
            Cmd.ADD_LOCKSPACE: self._add_lockspace,
            Cmd.REM_LOCKSPACE: self._rem_lockspace,
            Cmd.SHUTDOWN: self._shutdown,
            Cmd.STATUS: self._status,
            Cmd.ACQUIRE: self._acquire,
            Cmd.RELEASE: self._release,
            Cmd.INQUIRE: self._inquire,
            Cmd.CONVERT: self._convert,
            Cmd.RESTRICT: self._restrict,
            Cmd.REQUEST: self._request,
            Cmd.ALIGN: self._align,
            Cmd.EXAMINE_LOCKSPACE: self._examine_lockspace,
            Cmd.EXAMINE_RESOURCE: self._examine_resource,
            Cmd.HOST_STATUS: self._host_status,
            Cmd.INQ_LOCKSPACE: self._inq_lockspace,
            Cmd.KILLPATH: self._killpath,
            Cmd.WRITE_LOCKSPACE: self._write_lockspace,
            Cmd.WRITE_RESOURCE: self._write_resource,
            Cmd.READ_LOCKSPACE: self._read_lockspace,
            Cmd.READ_RESOURCE: self._read_resource,
            Cmd.GET_LOCKSPACES: self._get_lockspaces,
            Cmd.GET_HOSTS: self._get_hosts,
            Cmd.READ_RESOURCE_OWNERS: self._read_resource_owners,
            Cmd.VERSION: self._version,
            Cmd.SHUTDOWN_WAIT: self._shutdown_wait,
            Cmd.RENEWAL: self._renewal,
            Cmd.SET_CONFIG: self._set_config,
            Cmd.REG_EVENT: self._reg_event,
            Cmd.END_EVENT: self._end_event,
            Cmd.SET_EVENT: self._set_event,
            Cmd.LOG_DUMP: self._log_dump,
            Cmd.SET_LVB: self._set_lvb,
            Cmd.GET_LVB: self._get_lvb,
            Cmd.FORMAT_RINDEX: self._format_rindex,
            Cmd.UPDATE_RINDEX: self._update_rindex,
            Cmd.LOOKUP_RINDEX: self._lookup_rindex,
            Cmd.CREATE_RESOURCE: self._create_resource,
            Cmd.DELETE_RESOURCE: self._delete_resource,
            Cmd.REBUILD_RINDEX: self._rebuild_rindex,
        }

    # -- framing -------------------------------------------------------------------------------

    def serve(self, conn: socket.socket, session: Session) -> None:
        """Answer headers on `conn` until the client closes it (or we end a one-shot)."""
        while True:
            conn.settimeout(None)
            try:
                raw = _recv_exact(conn, sp.HEADER_B)
            except _Short:
                return
            if raw is None:
                return
            if session.restrict & sp.RESTRICT_ALL:
                continue
            header = Header.decode(raw)
            if not header.acceptable() or header.cmd not in self._handlers:
                continue  # sanlock 3.8.5 skips commands it does not know
            reply = self._answer(header, _Payload(conn), session)
            if reply is not None:
                conn.sendall(reply, socket.MSG_NOSIGNAL)
            if header.cmd in CLOSES_AFTER_REPLY and not session.registered:
                return

    def _answer(self, header: Header, payload: _Payload, session: Session) -> bytes | None:
        handler = self._handlers[header.cmd]
        error: LeasestoreError | None = None
        try:
            reply = handler(header, payload, session)
        except _Short:
            error = ProtocolError("the request's payload was shorter than its structs")
            reply = _Reply(-sp.ENOTCONN)
        except _Refused as refused:
            error = refused.error
            reply = _Reply(refused.code)
        except ProtocolError as exc:
            error = exc
            reply = _Reply(-sp.EINVAL)
        except LeasestoreError as exc:
            error = exc
            reply = _Reply(_acquire_code(exc) if header.cmd == Cmd.ACQUIRE else result_code(exc))
        except Exception as exc:
            log.exception("internal error handling sanlock command %d", header.cmd)
            error = LeasestoreError(f"internal error: {exc}")
            reply = _Reply(-201)
        if error is not None:  # the next header must be read where the client put it
            payload.drain(header)
            if header.cmd not in QUIET_REFUSALS:
                log.info("%s from pid %d refused (%d): %s", Cmd(header.cmd).name,
                         session.peer.pid, reply.code, error)
        if header.cmd_flags & sp.LS_DETAIL:
            if error is not None:
                document: dict[str, Any] = {"error": {"name": type(error).__name__,
                                                      "message": str(error)}}
            elif reply.code < 0:
                document = {"error": {"name": "LeasestoreError",
                                      "message": f"sanlock result {reply.code}"}}
            else:
                document = {"result": reply.detail}
            body = json.dumps(document, separators=(",", ":")).encode()
            return header.reply(reply.code, len(body), reply.data2) + body
        if reply.silent:
            return None
        if reply.raw is not None:
            return reply.raw
        counted = len(reply.payload) if reply.counted else 0
        return header.reply(reply.code, counted, reply.data2) + reply.payload

    # -- registration --------------------------------------------------------------------------

    def _register(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        try:
            self.daemon._register(commands.Register(), session)
        except LeasestoreError as exc:  # sanlock has no reply to fail: it shows on first use
            log.warning("register of pid %d refused: %s", session.peer.pid, exc)
            if header.cmd_flags & sp.LS_DETAIL:
                raise
        session.owner_name = str(session.peer.pid)
        return _Reply(detail={"pid": session.peer.pid}, silent=True)

    def _restrict(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        session.restrict = header.cmd_flags & ~sp.LS_DETAIL
        return _Reply()

    def _killpath(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        path, args = sp.decode_killpath(payload.take(sp.KILLPATH_B))
        with self._acting_for(header, session) as target:
            if not path:
                raise _refuse(-sp.EINVAL, UsageError, "killpath: empty program path")
            target.killpath = [path, *args]
            target.killpath_pid = bool(header.cmd_flags & sp.KILLPATH_PID)
        return _Reply()

    @contextlib.contextmanager
    def _acting_for(self, header: Header, session: Session) -> Iterator[Session]:
        """The target registration (as `_target`), marked busy while the command runs: a
        second lease command for it meanwhile is refused with -EBUSY."""
        target = self._target(header, session)
        with self.daemon._lock:
            if target.command_active:
                raise _refuse(-sp.EBUSY, LockspaceBusy, f"pid {target.peer.pid} has another "
                              "command active")
            target.command_active = True
        try:
            yield target
        finally:
            with self.daemon._lock:
                target.command_active = False

    def _target(self, header: Header, session: Session) -> Session:
        """The registration a lease command acts for: this connection's (data2 SELF), or the
        registered process whose pid data2 names (-EBUSY / -ESRCH when there is none)."""
        self_target = header.data2 == sp.SELF
        try:
            return self.daemon._target(session, 0 if self_target else header.data2)
        except NotRegistered as exc:
            raise _Refused(-sp.EBUSY if self_target else -sp.ESRCH, exc) from None

    # -- lockspaces ----------------------------------------------------------------------------

    def _lockspace_payload(self, payload: _Payload) -> sp.LockspaceStruct:
        return sp.LockspaceStruct.decode(payload.take(sp.LOCKSPACE_B))

    def _existing(self, ls: sp.LockspaceStruct) -> Lockspace:
        """The added lockspace `ls` names by its full key (host_id 0 matches any), or -ENOENT."""
        with self.daemon._lock:
            found = self.daemon.lockspaces.get(ls.name)
        if found is not None:
            spec = found.spec
            if ((spec.path, spec.offset_b) == (ls.disk.path, ls.disk.offset)
                    and ls.host_id in (0, spec.host_id)):
                return found
        raise _refuse(-sp.ENOENT, LockspaceNotJoined,
                      f"lockspace {ls.name}:{ls.host_id}:{ls.disk.path}:{ls.disk.offset} "
                      "is not added")

    def _add_lockspace(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        ls = self._lockspace_payload(payload)
        if not ls.name or not ls.host_id or not ls.disk.path:
            raise _refuse(-sp.EINVAL, UsageError, "add_lockspace needs a name, a host_id "
                          "and a path")
        daemon = self.daemon
        with daemon._lock:
            same_name = daemon.lockspaces.get(ls.name)
            same_area = [other.name for other in daemon.lockspaces.values()
                         if (other.spec.path, other.spec.offset_b)
                         == (ls.disk.path, ls.disk.offset)]
            removing = ls.name in daemon._removing
        if same_name is not None:
            spec = same_name.spec
            if (spec.host_id, spec.path, spec.offset_b) != (ls.host_id, ls.disk.path,
                                                            ls.disk.offset):
                raise _refuse(-sp.EINVAL, LockspaceExists,
                              f"lockspace {ls.name!r} is already added as {spec}")
            if removing:
                raise _refuse(-sp.EAGAIN, LockspaceBusy, f"lockspace {ls.name!r} is being "
                              "removed")
            if same_name.state == LockspaceState.JOINING:
                raise _refuse(-sp.EINPROGRESS, LockspaceBusy,
                              f"lockspace {ls.name!r} is being added")
            raise _refuse(-sp.EEXIST, LockspaceExists, f"lockspace {ls.name!r} is already "
                          "added")
        if same_area:
            raise _refuse(-sp.EINVAL, LockspaceExists, f"lockspace {same_area[0]!r} is "
                          f"already added on {ls.disk.path}:{ls.disk.offset}")
        command = commands.AddLockspace(ls.name, ls.host_id, ls.disk.path, ls.disk.offset,
                                    io_timeout=header.data,
                                    wait=not header.cmd_flags & sp.ADD_ASYNC)
        _validated(command)
        daemon._add_lockspace(command, session)
        return _Reply()

    def _rem_lockspace(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        lockspace = self._existing(self._lockspace_payload(payload))
        if lockspace.name in self.daemon._removing:
            raise _refuse(-sp.EINPROGRESS, LockspaceBusy,
                          f"lockspace {lockspace.name!r} is already being removed")
        spec = lockspace.spec
        self.daemon._rem_lockspace(
            commands.RemLockspace(spec.name, spec.host_id, spec.path, spec.offset_b,
                              wait=not header.cmd_flags & sp.REM_ASYNC,
                              unused=bool(header.cmd_flags & sp.REM_UNUSED)), session)
        return _Reply()

    def _set_config(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """data: USED / UNUSED (a removal waits while used), or USED_BY_ORPHANS /
        UNUSED_BY_ORPHANS (a removal waits while the lockspace has orphans)."""
        name = self._lockspace_payload(payload).name
        self.daemon._require_admin(session.peer, "set_config")
        if header.data not in (sp.CONFIG_USED, sp.CONFIG_UNUSED, sp.CONFIG_USED_BY_ORPHANS,
                               sp.CONFIG_UNUSED_BY_ORPHANS):
            raise _refuse(-sp.EINVAL, UsageError, f"unknown set_config command {header.data}")
        self._added(name)
        try:
            self.daemon.set_used(name, header.data in (sp.CONFIG_USED, sp.CONFIG_USED_BY_ORPHANS),
                                 by_orphans=header.data in (sp.CONFIG_USED_BY_ORPHANS,
                                                            sp.CONFIG_UNUSED_BY_ORPHANS))
        except HostLeaseExpired as exc:
            raise _Refused(-sp.ENOSPC, exc) from None
        return _Reply()

    def _added(self, name: str) -> Lockspace:
        """The added lockspace of that name; unknown is -ENOENT here (SET_CONFIG, events)."""
        try:
            return self.daemon._named(name)
        except LockspaceNotJoined as exc:
            raise _Refused(-sp.ENOENT, exc) from None

    def _reg_event(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """Keep a duplicate of this connection as an event channel of the lockspace."""
        name = self._lockspace_payload(payload).name
        payload.take(sp.HOST_EVENT_B)  # unused
        self._added(name)
        with self.daemon._lock:
            full = len(self.daemon.event_listeners.get(name, [])) >= MAX_EVENT_LISTENERS
        if full:
            self._close_ended_listeners(name)
        with self.daemon._lock:
            listeners = self.daemon.event_listeners.setdefault(name, [])
            if len(listeners) >= MAX_EVENT_LISTENERS:
                raise _refuse(-sp.ENOCSI, LockspaceBusy, f"lockspace {name!r} has "
                              f"{MAX_EVENT_LISTENERS} event listeners already")
            listeners.append(payload.conn.dup())
        return _Reply()

    def _end_event(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """libsanlock writes 1 on the event channel and closes it before it sends this."""
        name = self._lockspace_payload(payload).name
        self._added(name)
        self._close_ended_listeners(name)
        return _Reply()

    def _close_ended_listeners(self, name: str) -> None:
        """Drop the listeners whose client ended them: 1 (END_EVENT's word) or EOF to read."""
        with self.daemon._lock:
            listeners = list(self.daemon.event_listeners.get(name, []))
        ended = []
        for listener in listeners:
            try:
                word = listener.recv(4, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                word = b""
            if not word or int.from_bytes(word.ljust(4, b"\0"), "little") == 1:
                ended.append(listener)
        self.daemon.drop_event_listeners(name, ended)

    def _set_event(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        name = self._lockspace_payload(payload).name
        host_id, generation, event, data = sp.decode_host_event(payload.take(sp.HOST_EVENT_B))
        self.daemon._require_admin(session.peer, "set_event")
        lockspace = self._added(name)
        flags = header.cmd_flags
        try:
            lockspace.set_event(host_id, generation, event, data,
                                cur_generation=bool(flags & sp.SETEV_CUR_GENERATION),
                                clear_host=bool(flags & sp.SETEV_CLEAR_HOSTID),
                                clear_event=bool(flags & sp.SETEV_CLEAR_EVENT),
                                replace=bool(flags & sp.SETEV_REPLACE_EVENT),
                                all_hosts=bool(flags & sp.SETEV_ALL_HOSTS))
        except HostIdInvalid as exc:
            raise _Refused(-sp.EINVAL, exc) from None
        log.info("set_event %s host %d generation %d event %d data %d", name, host_id,
                 generation, event, data)
        return _Reply()

    def _log_dump(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """data: the byte count of the recent log text that follows (not counted in length)."""
        text = recent_log.text().encode(errors="replace")
        return _Reply(len(text), payload=text, counted=False, detail={"log": text.decode()})

    def _inq_lockspace(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        lockspace = self._existing(self._lockspace_payload(payload))
        spec = lockspace.spec
        joined = self.daemon._inq_lockspace(
            commands.InqLockspace(spec.name, spec.host_id, spec.path, spec.offset_b,
                              wait=bool(header.cmd_flags & sp.INQ_WAIT)), session)
        if joined is None:
            raise _refuse(-sp.EINPROGRESS, LockspaceBusy,
                          f"lockspace {spec.name!r} is being added or removed")
        if not joined:
            raise _refuse(-sp.ENOENT, LockspaceNotJoined,
                          f"lockspace {spec.name!r} is {lockspace.state}")
        return _Reply()

    def _lockspaces(self) -> list[Lockspace]:
        with self.daemon._lock:
            return list(self.daemon.lockspaces.values())

    def _lockspace_struct(self, lockspace: Lockspace, in_status: bool) -> bytes:
        """GET_LOCKSPACES' struct (flags ADD/REM, pads 0), or STATUS's (flags 0, the sector
        size in the disk's first pad)."""
        spec = lockspace.spec
        flags = 0
        if lockspace.state == LockspaceState.JOINING:
            flags |= sp.LSF_ADD
        if lockspace.name in self.daemon._removing:
            flags |= sp.LSF_REM
        table = lockspace.table
        sector = table.geometry.sector_size if table is not None else 512
        disk = sp.Disk(spec.path, spec.offset_b, sector if in_status else 0)
        return sp.LockspaceStruct(spec.name, spec.host_id, 0 if in_status else flags,
                                  disk).encode()

    def _get_lockspaces(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        lockspaces = self._lockspaces()
        body = b"".join(self._lockspace_struct(ls, in_status=False) for ls in lockspaces)
        return _Reply(payload=body, data2=len(lockspaces),
                      detail=[self.daemon._lockspace_info(ls) for ls in lockspaces])

    def _get_hosts(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        ls = self._lockspace_payload(payload)
        with self.daemon._lock:
            lockspace = self.daemon.lockspaces.get(ls.name)
        if lockspace is None or lockspace.state == LockspaceState.JOINING:
            raise _refuse(-sp.ENOENT, LockspaceNotJoined, f"lockspace {ls.name!r} is not "
                          "joined")
        table = lockspace.table
        if table is None or not lockspace.hosts():  # not even ourselves: no renewal read yet
            raise _refuse(-sp.EAGAIN, LockspaceNotJoined,
                          f"lockspace {ls.name!r} has not read the other hosts yet")
        if ls.host_id > table.geometry.max_hosts:
            raise _refuse(-sp.EINVAL, UsageError, f"host_id {ls.host_id} out of range")
        seen = lockspace.hosts(ls.host_id)
        hosts = [h for h in seen if ls.host_id or h.timestamp]  # sanlock: free ones by id only
        body = b"".join(sp.Host(h.host_id, h.generation, h.timestamp,
                                h.io_timeout if h.timestamp else 0,  # sanlock: 0 when free
                                int(h.state)).encode() for h in hosts)
        # The detail lists every host in the table, free ones too (who left, and when).
        return _Reply(payload=body, data2=len(hosts), detail=[h.to_json() for h in seen])

    def _named_for_stream(self, payload: _Payload) -> Lockspace:
        """HOST_STATUS and RENEWAL: a lockspace struct follows a header whose length is 32."""
        ls = self._lockspace_payload(payload)
        with self.daemon._lock:
            lockspace = self.daemon.lockspaces.get(ls.name)
        if lockspace is None:
            raise _refuse(-sp.ENOSPC, LockspaceNotJoined, f"lockspace {ls.name!r} is not "
                          "added")
        return lockspace

    def _host_status(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        lockspace = self._named_for_stream(payload)
        hosts = [h for h in lockspace.hosts() if h.last_live_s or h.owner_id]
        checked_s = int(lease_now_s())
        records = b"".join(sp.state_record(
            sp.StateType.HOST, "",
            f"last_check={checked_s} last_live={int(h.last_live_s)} last_req=0 "
            f"owner_id={h.owner_id} owner_generation={h.generation} timestamp={h.timestamp} "
            f"io_timeout={h.io_timeout} owner_name={h.host_name}",
            data32=h.host_id, data64=h.timestamp) for h in hosts)
        return _Reply(payload=records, counted=False, detail=[h.to_json() for h in hosts])

    def _renewal(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        lockspace = self._named_for_stream(payload)
        history = lockspace.history()
        records = b"".join(sp.state_record(
            sp.StateType.RENEWAL, "",
            f"timestamp={r.timestamp} read_ms={r.read_us // 1000} "
            f"write_ms={r.write_us // 1000} next_timeouts={int(r.error is not None)} "
            "next_errors=0", data64=r.timestamp) for r in history)
        return _Reply(payload=records, counted=False, data2=lockspace.timeouts.io_timeout_s,
                      detail=[r.to_json() for r in history])

    # -- resource leases -----------------------------------------------------------------------

    def _resources_with_disks(self, payload: _Payload, count: int
                              ) -> list[tuple[sp.Resource, list[sp.Disk]]]:
        found = []
        for _ in range(count):
            resource = sp.Resource.decode(payload.take(sp.RESOURCE_B))
            if not 1 <= resource.num_disks <= sp.MAX_DISKS:
                raise _refuse(-sp.ERANGE, UsageError,
                              f"num_disks must be 1..{sp.MAX_DISKS}, not {resource.num_disks}")
            disks = [sp.Disk.decode(payload.take(sp.DISK_B))
                     for _ in range(resource.num_disks)]
            found.append((resource, disks))
        return found

    def _one_resource(self, payload: _Payload) -> tuple[sp.Resource, list[sp.Disk]]:
        [(resource, disks)] = self._resources_with_disks(payload, 1)
        return resource, disks

    def _acquire(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        count = header.data
        if not 0 <= count <= sp.MAX_RESOURCES:
            raise _refuse(-sp.E2BIG, UsageError,
                          f"at most {sp.MAX_RESOURCES} resources per acquire, not {count}")
        wanted = self._resources_with_disks(payload, count)
        owner_name = sp.decode_options(payload.take(sp.OPTIONS_B))
        with self._acting_for(header, session) as target:
            return self._acquire_for(target, header, wanted, owner_name, session)

    def _acquire_for(self, target: Session, header: Header,
                     wanted: list[tuple[sp.Resource, list[sp.Disk]]], owner_name: str,
                     session: Session) -> _Reply:
        target.owner_name = owner_name
        # ORPHAN_ONLY, like ORPHAN, adopts an orphan if there is one and otherwise acquires
        # (sanlock 3.8.5 does so, although its header promises -ENOENT).
        adopt = bool(header.cmd_flags & (sp.ACQUIRE_ORPHAN | sp.ACQUIRE_ORPHAN_ONLY))
        pid = 0 if target is session else target.peer.pid
        acquired: list[commands.Release] = []
        results = []
        try:
            for resource, disks in wanted:
                disk = disks[0]
                command = commands.Acquire(resource.lockspace, resource.name, disk.path,
                                       disk.offset, pid=pid, extra_disks=_further(disks),
                                       shared=bool(resource.flags & sp.RES_SHARED),
                                       lver=resource.lver if resource.flags & sp.RES_LVER
                                       else -1, lvb=bool(header.cmd_flags & sp.ACQUIRE_LVB),
                                       persistent=bool(resource.flags & sp.RES_PERSISTENT),
                                       adopt=adopt, owner_nowait=bool(
                                           header.cmd_flags & sp.ACQUIRE_OWNER_NOWAIT))
                _validated(command)
                results.append(self.daemon._acquire(command, session))
                acquired.append(commands.Release(resource.lockspace, resource.name, disk.path,
                                             disk.offset, pid=pid))
        except BaseException:
            for release in acquired:  # all of one call's leases, or none
                self._release_quietly(release, session)
            raise
        return _Reply(detail=results)

    def _release_quietly(self, release: commands.Release, session: Session) -> None:
        try:
            self.daemon._release(release, session)
        except LeasestoreError as exc:
            log.warning("undoing a partial acquire of %s: %s", release.resource, exc)

    def _release(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        release_all = bool(header.cmd_flags & sp.REL_ALL)
        count = 0 if release_all else header.data
        if not 0 <= count <= sp.MAX_RESOURCES:
            raise _refuse(-sp.E2BIG, UsageError,
                          f"at most {sp.MAX_RESOURCES} resources per release, not {count}")
        if header.cmd_flags & sp.REL_ORPHAN:
            count = 1
        named = [sp.Resource.decode(payload.take(sp.RESOURCE_B)) for _ in range(count)]
        if header.cmd_flags & sp.REL_RENAME:
            if len(named) != 2:
                raise _refuse(-sp.EINVAL, UsageError, "a release with rename names the lease "
                              f"and its new name: 2 resources, not {len(named)}")
            if not named[1].name:
                raise _refuse(-sp.EINVAL, UsageError, "a release with rename needs a new name")
            with self._acting_for(header, session) as target:
                return self._release_for(target, named[:1], False, session,
                                         rename=named[1].name)
        if header.cmd_flags & sp.REL_ORPHAN:
            with self._acting_for(header, session):
                self.daemon._require_admin(session.peer, "release orphans")
                [orphan] = named
                released = self.daemon.release_orphans(orphan.lockspace, orphan.name)
            return _Reply(released, detail={"released": released})
        with self._acting_for(header, session) as target:
            return self._release_for(target, named, release_all, session)

    def _release_for(self, target: Session, named: list[sp.Resource], release_all: bool,
                     session: Session, rename: str = "") -> _Reply:
        held = self._held_through(target)
        chosen = list(held) if release_all else []
        missing = []
        for resource in named:
            match = [h for h in held if h.key[:2] == (resource.lockspace, resource.name)]
            if not match:
                missing.append(resource.name)
            chosen.extend(match)
        pid = 0 if target is session else target.peer.pid
        failure: LeasestoreError | None = None
        for lease in chosen:
            lockspace, name, path, offset = lease.key
            try:
                self.daemon._release(commands.Release(lockspace, name, path, offset, pid=pid,
                                                      rename=rename), session)
            except LeasestoreError as exc:
                failure = failure or exc
        if missing:  # the others named were still released, as sanlock does
            raise _refuse(-1, LeaseNotHeld,
                          f"pid {target.peer.pid} does not hold {', '.join(missing)}")
        if failure is not None:
            raise failure
        return _Reply()

    def _held_through(self, registration: Session) -> list[HeldResource]:
        """The leases its process holds through this registration."""
        return [h for h in self.daemon.resources.held_by(registration.peer.pid)
                if h.key in registration.keys]

    def _inquire(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        with self._acting_for(header, session) as target:
            held = self._held_through(target)
        detail = [h.to_json() for h in held]
        if not held:
            return _Reply(detail=detail)
        text = " ".join(_state_string(h) for h in held).encode() + b"\0"
        return _Reply(payload=text, data2=len(held), detail=detail)

    # -- the resource index (rindex.py) -------------------------------------------------------

    def _format_rindex(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """sanlk_rindex: its flags give the geometry (default: the device's), max_resources
        0 is sanlock's 4096. Both areas are written whole."""
        self.daemon._require_admin(session.peer, "format a resource index")
        rx = sp.RindexStruct.decode(payload.take(sp.RINDEX_B))
        sector, align = sp.geometry_flags(rx.flags)
        with DirectDevice(rx.disk.path) as device:
            geometry = direct.resolve_geometry(device, sector, align)
        index = RindexHeader(rx.lockspace, geometry, rx.disk.offset,
                             rx.max_resources or DEFAULT_MAX_RESOURCES)
        self.daemon.resources.run(rindex.formatting(rx.disk.path, index, READ_IO_TIMEOUT_S))
        return _Reply()

    def _rindex_read(self, payload: _Payload, with_entry: bool = True
                     ) -> tuple[sp.RindexStruct, sp.Rentry, RindexHeader, list[RindexEntry]]:
        rx = sp.RindexStruct.decode(payload.take(sp.RINDEX_B))
        wanted = sp.Rentry.decode(payload.take(sp.RENTRY_B)) if with_entry else sp.Rentry("")
        if not rx.flags & sp.RX_NO_LOCKSPACE:
            self._added(rx.lockspace)  # as sanlock: -ENOENT unless the lockspace is added
        index, entries = self.daemon.resources.run(
            rindex.reading(rx.disk.path, rx.disk.offset, rx.lockspace, READ_IO_TIMEOUT_S))
        return rx, wanted, index, entries

    def _under_rindex_lease(self, rx: sp.RindexStruct, index: RindexHeader,
                            body: Callable[[], Algorithm[RindexEntry]]) -> RindexEntry:
        """Run `body` holding the index's lease (our host lease of its lockspace must be
        held), or without it if the request says RX_NO_LOCKSPACE."""
        service = self.daemon.resources
        if rx.flags & sp.RX_NO_LOCKSPACE:
            with self._rindex_lock:
                return service.run(body())
        lockspace = self.daemon._named(rx.lockspace)
        key = (rx.lockspace, LEASE_NAME, rx.disk.path, index.lease_offset_b)

        def leased() -> Algorithm[RindexEntry]:
            params = yield from service.lease_params(lockspace, key)
            return (yield from rindex.under_lease(params, body))

        with self._rindex_lock:  # our own changes one at a time: to the lease we are one
            return service.run(leased())

    def _update_rindex(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """RXUP_ADD sets the entry of the slot the rentry's offset names, RXUP_REM clears it
        (the index's lease is not taken: sanlock's update does not take it either)."""
        self.daemon._require_admin(session.peer, "update a resource index")
        rx, wanted, index, _entries = self._rindex_read(payload)
        if not header.cmd_flags & (sp.RXUP_ADD | sp.RXUP_REM) or not wanted.offset:
            raise _refuse(-sp.EINVAL, UsageError, "update needs RXUP_ADD or RXUP_REM and an "
                          "offset")
        remove = bool(header.cmd_flags & sp.RXUP_REM)
        # As in sanlock, without the index's lease: update is the repair tool.
        done = self.daemon.resources.run(rindex.updating(
            rx.disk.path, index, wanted.name, wanted.offset, remove, READ_IO_TIMEOUT_S))
        return _rentry_reply(done)

    def _lookup_rindex(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """By name, by offset, or (neither) the first free slot. The client's length counts
        64 bytes more than it sends (its bug): they are not waited for."""
        _rx, wanted, index, entries = self._rindex_read(payload)
        return _rentry_reply(rindex.lookup(index, entries, wanted.name, wanted.offset))

    def _create_resource(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """d = max_hosts (unused: the geometry sets it), d2 = num_hosts (0: all)."""
        self.daemon._require_admin(session.peer, "create a resource")
        rx, wanted, index, _entries = self._rindex_read(payload)
        if not wanted.name:
            raise _refuse(-sp.EINVAL, UsageError, "create needs a resource name")

        def create() -> Algorithm[RindexEntry]:
            _, entries = yield from rindex.reading(rx.disk.path, rx.disk.offset, rx.lockspace,
                                                   READ_IO_TIMEOUT_S)
            return (yield from rindex.creating(rx.disk.path, index, entries, wanted.name,
                                               header.data2, READ_IO_TIMEOUT_S))

        return _rentry_reply(self._under_rindex_lease(rx, index, create))

    def _delete_resource(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        self.daemon._require_admin(session.peer, "delete a resource")
        rx, wanted, index, _entries = self._rindex_read(payload)

        def delete() -> Algorithm[RindexEntry]:
            _, entries = yield from rindex.reading(rx.disk.path, rx.disk.offset, rx.lockspace,
                                                   READ_IO_TIMEOUT_S)
            return (yield from rindex.deleting(rx.disk.path, index, entries, wanted.name,
                                               wanted.offset, READ_IO_TIMEOUT_S))

        return _rentry_reply(self._under_rindex_lease(rx, index, delete))

    def _rebuild_rindex(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        self.daemon._require_admin(session.peer, "rebuild a resource index")
        rx, _wanted, index, _entries = self._rindex_read(payload, with_entry=False)

        def rebuild() -> Algorithm[RindexEntry]:
            yield from rindex.rebuilding(rx.disk.path, index, READ_IO_TIMEOUT_S)
            return RindexEntry()

        self._under_rindex_lease(rx, index, rebuild)
        return _Reply()

    def _convert(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """One resource struct (no disks), matched among the target's leases: SHARED in its
        flags asks for shared mode, otherwise exclusive. -ENOENT if not held. A convert waits
        for an owner's lease as an acquire does, unless CONVERT_OWNER_NOWAIT (-247)."""
        wanted = sp.Resource.decode(payload.take(sp.RESOURCE_B))
        shared = bool(wanted.flags & sp.RES_SHARED)
        with self._acting_for(header, session) as target:
            match = [h for h in self._held_through(target)
                     if h.key[:2] == (wanted.lockspace, wanted.name)]
            if not match:
                raise _refuse(-sp.ENOENT, LeaseNotHeld, f"pid {target.peer.pid} does not hold "
                              f"{wanted.name!r}")
            lockspace = self.daemon._named(wanted.lockspace)
            converted = self.daemon.resources.convert(
                lockspace, match[0].key, target.peer.pid, shared,
                owner_nowait=bool(header.cmd_flags & sp.CONVERT_OWNER_NOWAIT))
        return _Reply(detail=converted.to_json())

    def _set_lvb(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """The resource struct (no disks), then the bytes: copied over the holding's LVB."""
        resource = sp.Resource.decode(payload.take(sp.RESOURCE_B))
        size = header.length - sp.HEADER_B - sp.RESOURCE_B
        if size > MAX_LVB_B:
            raise _refuse(-sp.E2BIG, LvbTooLarge, f"an LVB holds at most {MAX_LVB_B} bytes, "
                          f"not {size}")
        data = payload.take(size) if size > 0 else b""
        resources = self.daemon.resources
        resources.set_lvb(resources.lvb_holding(resource.lockspace, resource.name), data)
        return _Reply()

    def _get_lvb(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """data2: how many bytes (0: the whole sector, which is what libsanlock asks)."""
        resource = sp.Resource.decode(payload.take(sp.RESOURCE_B))
        resources = self.daemon.resources
        value = resources.get_lvb(resources.lvb_holding(resource.lockspace, resource.name),
                                  min(header.data2, MAX_LVB_B))
        return _Reply(payload=value, detail={"lvb": value.hex()})

    def _request(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        resource, disks = self._one_resource(payload)
        disk = disks[0]
        if header.cmd_flags & sp.REQUEST_NEXT_LVER or not resource.flags & sp.RES_LVER:
            lver = -1
        else:
            lver = resource.lver
        command = commands.RequestRelease(resource.lockspace, resource.name, disk.path,
                                      disk.offset, lver=lver, force_mode=header.data,
                                      extra_disks=_further(disks))
        _validated(command)
        return _Reply(detail=self.daemon._request(command, session))

    def _examine_lockspace(self, header: Header, payload: _Payload,
                           session: Session) -> _Reply:
        self._examine(self._lockspace_payload(payload).name)
        return _Reply()

    def _examine_resource(self, header: Header, payload: _Payload,
                          session: Session) -> _Reply:
        self._examine(sp.Resource.decode(payload.take(sp.RESOURCE_B)).lockspace)
        return _Reply()

    def _examine(self, name: str) -> None:
        with self.daemon._lock:
            lockspace = self.daemon.lockspaces.get(name)
        if lockspace is not None:
            threading.Thread(target=self.daemon._examine, args=(lockspace,),
                             daemon=True).start()

    # -- areas on disk -------------------------------------------------------------------------

    def _align(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        disk = sp.Disk.decode(payload.take(sp.DISK_B))
        try:
            with DirectDevice(_checked_path(disk.path), readonly=True) as device:
                geometry = Geometry.default_for(device.sector_size)
        except (LeasestoreError, OSError) as exc:
            raise _refuse(-sp.ENODEV, DeviceMissing, f"{disk.path}: {exc}") from None
        return _Reply(geometry.align_size, detail=geometry.align_size)

    def _write_lockspace(self, header: Header, payload: _Payload,
                         session: Session) -> _Reply:
        ls = self._lockspace_payload(payload)
        self.daemon._require_admin(session.peer, "format lockspaces")
        self._refuse_joined_area(ls.disk)
        sector, align = sp.geometry_flags(ls.flags)
        io_timeout_s = header.data2 or DEFAULT_IO_TIMEOUT_S
        _on_device(lambda: direct.format_lockspace(
            _checked_path(ls.disk.path), ls.name, ls.disk.offset,
            sector_size=sector if align else None, align=align if sector else None,
            io_timeout_s=io_timeout_s, force=True))
        return _Reply()

    def _write_resource(self, header: Header, payload: _Payload,
                        session: Session) -> _Reply:
        resource, disks = self._one_resource(payload)
        self.daemon._require_admin(session.peer, "format resources")
        sector, align = sp.geometry_flags(resource.flags)
        further = tuple((_checked_path(d.path), d.offset) for d in disks[1:])
        _on_device(lambda: direct.format_resource(
            _checked_path(disks[0].path), resource.lockspace, resource.name, disks[0].offset,
            sector_size=sector if align else None, align=align if sector else None,
            num_hosts=max(header.data, 0), force=True,
            clear=bool(header.cmd_flags & sp.WRITE_CLEAR), extra_disks=further))
        return _Reply()

    def _refuse_joined_area(self, disk: sp.Disk) -> None:
        """Formatting the area of a lockspace we have joined would erase live host leases."""
        for lockspace in self._lockspaces():
            if (lockspace.spec.path, lockspace.spec.offset_b) == (disk.path, disk.offset):
                raise _refuse(-sp.EBUSY, AreaInUse, f"{disk.path}:{disk.offset} is lockspace "
                              f"{lockspace.name!r}, joined by this daemon")

    def _read_lockspace(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """The struct always follows the header (libsanlock reads it only on success)."""
        ls = self._lockspace_payload(payload)
        host_id = ls.host_id or 1
        sector, _align = sp.geometry_flags(ls.flags)
        try:
            with DirectDevice(_checked_path(ls.disk.path), readonly=True) as device:
                sector_size = sector or device.sector_size
                raw = device.read(ls.disk.offset + (host_id - 1) * sector_size, sector_size,
                                  READ_IO_TIMEOUT_S)
            leader = decode_leader(raw, (LeaderMagic.DELTA,))
        except (LeasestoreError, OSError, _Refused) as exc:
            code = result_code(exc) if isinstance(exc, CorruptRecord) else -sp.ENODEV
            return _Reply(code, payload=ls.encode())
        if ls.name and ls.name != leader.space_name:
            return _Reply(WrongLockspace.code, payload=ls.encode())
        geometry = Geometry.from_leader_fields(leader.sector_size, leader.flags)
        found = sp.LockspaceStruct(leader.space_name, host_id, sp.flags_of_geometry(
            geometry.sector_size, geometry.align_size), ls.disk)
        return _Reply(payload=found.encode(), data2=leader.io_timeout,
                      detail={"lockspace": leader.space_name, "io_timeout": leader.io_timeout})

    @staticmethod
    def _holdings(disks: list[sp.Disk]) -> Holdings:
        """The lease on `disks` as a majority of them shows it (daemonless.lease_holdings); a
        device that cannot be read, or too few disks with a valid copy, is -ENODEV."""
        paths = [(_checked_path(disk.path), disk.offset) for disk in disks]
        return _on_device(lambda: daemonless.lease_holdings(paths))

    @staticmethod
    def _as_resource(leader: Leader, shared: bool = False) -> sp.Resource:
        geometry = Geometry.from_leader_fields(leader.sector_size, leader.flags)
        flags = sp.flags_of_geometry(geometry.sector_size, geometry.align_size)
        return sp.Resource(leader.space_name, leader.resource_name, leader.lver,
                           flags=flags | (sp.RES_SHARED if shared else 0), num_disks=1)

    def _read_resource(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """The struct always follows the header: libsanlock reads it even on error."""
        asked, disks = self._one_resource(payload)
        try:
            paths = [(_checked_path(disk.path), disk.offset) for disk in disks]
            found = self._as_resource(_on_device(lambda: daemonless.lease_leader(paths)))
        except (LeasestoreError, _Refused) as exc:
            code = exc.code if isinstance(exc, _Refused) else result_code(exc)
            return _Reply(code, payload=asked.encode())
        return _Reply(payload=found.encode(), detail={
            "lockspace": found.lockspace, "resource": found.name, "version": found.lver})

    def _read_resource_owners(self, header: Header, payload: _Payload,
                              session: Session) -> _Reply:
        _asked, disks = self._one_resource(payload)
        try:
            holdings = self._holdings(disks)
        except BadMagic as exc:  # sanlock answers an uninitialised area so here
            raise _Refused(-sp.EINVAL, exc) from None
        owners = daemonless.owners_of(holdings)
        resource = self._as_resource(holdings.leader, any(owner.shared for owner in owners))
        body = resource.encode() + b"".join(
            sp.Host(o.host_id, o.generation, o.timestamp, 0, 0).encode() for o in owners)
        return _Reply(payload=body, data2=len(owners),
                      detail=[dataclasses.asdict(o) for o in owners])

    # -- daemon --------------------------------------------------------------------------------

    def _version(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        raw = Header(sp.SM_MAGIC, sp.SM_PROTO, Cmd.VERSION, 0, sp.HEADER_B, 0, 0,
                     sp.VERSION_WORD).encode()
        return _Reply(data2=sp.VERSION_WORD, raw=raw,
                      detail={"version": self.daemon.version, "sanlock": "3.8.5"})

    def _shutdown(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        if header.data or not self._lockspaces():
            self.daemon._require_admin(session.peer, "shut the daemon down")
            log.info("shutdown requested by pid %d (force %d)", session.peer.pid, header.data)
            self.daemon.shutdown()
        return _Reply(silent=True)

    def _shutdown_wait(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        if not header.data and self._lockspaces():
            raise _refuse(-sp.EBUSY, LockspaceBusy, "lockspaces are added; shutdown without "
                          "force waits for none")
        self.daemon._require_admin(session.peer, "shut the daemon down")
        self.daemon.shutdown()
        self.daemon.stopped.wait()
        return _Reply(raw=Header(sp.SM_MAGIC, sp.SM_PROTO, 0, 0, sp.HEADER_B, 0, 0,
                                 0).encode())

    def _status(self, header: Header, payload: _Payload, session: Session) -> _Reply:
        """Records up to the type `data` names (0: all), then the connection ends. Each
        record's text has sanlock's keys in sanlock's order (`client status -D` prints them);
        a key for a part of sanlock leasestore has not (its helper process, its worker
        threads, its client slots' fds) carries a fixed value."""
        daemon = self.daemon
        last_type = header.data
        records = [sp.state_record(sp.StateType.DAEMON, daemon.config.host_name,
                                   _daemon_text(daemon))]
        if last_type != 1:
            with daemon._lock:
                sessions = daemon._registrations()
            # As sanlock lists its own slots: the listener, and this status connection.
            slots: list[tuple[str, int, Session | None]] = [
                ("listener", -1, None), *((c.owner_name, c.peer.pid, c) for c in sessions),
                ("status", -1, None)]
            records.extend(sp.state_record(sp.StateType.CLIENT, name,
                                           _client_text(index, pid, client), data32=pid)
                           for index, (name, pid, client) in enumerate(slots))
        if last_type not in (1, 2):
            for index, lockspace in enumerate(self._lockspaces(), start=1):
                records.append(sp.state_record(sp.StateType.LOCKSPACE, lockspace.name,
                                               _lockspace_text(daemon, lockspace, index),
                                               data64=lockspace.spec.host_id)
                               + self._lockspace_struct(lockspace, in_status=True))
        if last_type not in (1, 2, 3):
            # Newest first, as sanlock lists them.
            holdings = list(reversed(daemon.resources.held.values()))
            for index, held in enumerate(holdings, start=1):
                records.extend(_resource_record(held, pid, index) for pid in sorted(held.pids))
            # Orphans last, as sanlock lists them: an exclusive one under its last holder's
            # pid, a shared one under pid 0.
            records.extend(_resource_record(held, 0 if held.lease.shared else held.pid, index)
                           for index, held in enumerate(holdings, start=1) if held.orphan)
        return _Reply(payload=b"".join(records), counted=False, data2=header.data2,
                      detail=daemon._status(commands.Status(), session))


def _fields(**values: object) -> str:
    return " ".join(f"{key}={value}" for key, value in values.items())


def _daemon_text(daemon: Daemon) -> str:
    config = daemon.config
    return _fields(
        our_host_name=config.host_name,
        use_watchdog=int(daemon.watchdog.describe() != "none"), high_priority=0,
        mlock_level=0, quiet_fail=1, debug_renew=0, debug_clients=0, debug_cmds="0x0",
        renewal_history_size=config.renewal_history_size, gid=os.getgid(), uid=os.getuid(),
        sh_retries=SH_RETRIES, max_sectors_kb_ignore=0, max_sectors_kb_align=0,
        max_sectors_kb_num=0, max_worker_threads=0,
        write_init_io_timeout=config.io_timeout, use_aio=1,
        kill_grace_seconds=Timeouts(config.io_timeout,
                                    config.watchdog_fire_timeout).kill_grace_s,
        helper_pid=os.getpid(), helper_kill_fd=-1, helper_full_count=0, helper_last_status=0,
        monotime=int(lease_now_s()), version_str=f"leasestore-{daemon.version}",
        version_num="3.8.5", version_hex=f"{sp.VERSION_WORD:08x}",
        smproto_hex=f"{sp.SM_PROTO:08x}")


def _client_text(slot: int, pid: int, client: Session | None) -> str:
    """A client slot: one of the daemon's own (no Session), or a registration."""
    return _fields(
        ci=slot, fd=-1, pid=pid, flags=0,
        restricted=f"{client.restrict:x}" if client is not None else "0",
        cmd_active=int(client is not None and client.command_active), cmd_last=0,
        pid_dead=int(client is not None and client.closed), kill_count=0, kill_last=0,
        suspend=0, need_free=0)


def _lockspace_text(daemon: Daemon, lockspace: Lockspace, space_id: int) -> str:
    state = lockspace.state
    listed = ("rem" if lockspace.name in daemon._removing else
              "add" if state == LockspaceState.JOINING else "spaces")
    table = lockspace.table
    geometry = table.geometry if table is not None else None
    history = lockspace.history()
    last = history[-1] if history else None
    failed = state == LockspaceState.FAILED
    with daemon._lock:
        external_used = int(lockspace.name in daemon._used)
        used_by_orphans = int(lockspace.name in daemon._used_by_orphans)
    return _fields(
        list=listed, space_id=space_id, io_timeout=lockspace.timeouts.io_timeout_s,
        sector_size=geometry.sector_size if geometry else 0,
        align_size=geometry.align_size if geometry else 0,
        host_generation=lockspace.generation,
        renew_fail=int(state == LockspaceState.RENEWAL_FAILING), space_dead=int(failed),
        killing_pids=int(failed and bool(daemon.resources.holder_pids(lockspace.name))),
        used_retries=0, external_used=external_used, used_by_orphans=used_by_orphans,
        renewal_read_extend_sec=0, set_max_sectors_kb=0, corrupt_result=0,
        acquire_last_result=int(lockspace.joined_s > 0),
        renewal_last_result=int(last is not None and last.error is None),
        acquire_last_attempt=int(lockspace.joined_s), acquire_last_success=int(lockspace.joined_s),
        renewal_last_attempt=int(last.time_s) if last is not None else 0,
        renewal_last_success=int(lockspace.last_success_s))


def _rentry_reply(entry: RindexEntry) -> _Reply:
    return _Reply(payload=sp.Rentry(entry.name, entry.offset_b, entry.flags).encode(),
                  detail={"name": entry.name, "offset": entry.offset_b})


def _resource_record(held: HeldResource, pid: int, res_id: int) -> bytes:
    lockspace, name = held.key[:2]
    shared = held.lease.shared
    sector = held.params.geometry.sector_size
    text = _fields(list="orphan" if held.orphan else "held",
                   flags=int(shared),  # sanlock's own resource flag bit (R_SHARED 1)
                   sector_size=sector,
                   align_size=held.params.geometry.align_size, lver=held.lease.lver, reused=0,
                   res_id=res_id, token_id=0)
    disks = held.params.disks
    resource = sp.Resource(lockspace, name, 0, flags=sp.RES_SHARED if shared else 0,
                           num_disks=len(disks))
    return (sp.state_record(sp.StateType.RESOURCE, name, text, data32=pid,
                            data64=held.lease.lver) + resource.encode()
            + b"".join(sp.Disk(path, offset, sector, sp.SELF).encode() for path, offset in disks))


def _escaped(path: str) -> str:
    """A path as libsanlock escapes it in a state string."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(" ", "\\ ")


def _state_string(held: HeldResource) -> str:
    """sanlock's state string for one lease: every disk, then the version (or SH)."""
    lockspace, name = held.key[:2]
    disks = ":".join(f"{_escaped(path)}:{offset}" for path, offset in held.params.disks)
    tail = "SH" if held.lease.shared else str(held.lease.lver)
    return f"{lockspace}:{name}:{disks}:{tail}"


def _acquire_code(exc: LeasestoreError) -> int:
    if isinstance(exc, NotRegistered):
        return -sp.ENOTTY  # the process exited while we acquired for it
    if isinstance(exc, LeaseAlreadyHeld):
        return -sp.EEXIST
    if isinstance(exc, LockspaceNotJoined):
        return -sp.ENOSPC
    if isinstance(exc, ProtocolError | UsageError):
        return -sp.EINVAL
    return result_code(exc)


def _validated(command: commands.Command) -> None:
    try:
        command.validate()
    except ProtocolError as exc:
        raise _Refused(-sp.EINVAL, UsageError(str(exc))) from None


def _further(disks: list[sp.Disk]) -> tuple[tuple[str, int], ...]:
    """A lease's disks after the first, as commands carry them."""
    return tuple((disk.path, disk.offset) for disk in disks[1:])


def _checked_path(path: str) -> str:
    if not path or len(path.encode()) > MAX_PATH_B:
        raise _refuse(-sp.ENODEV, DeviceMissing, f"bad device path {path!r}")
    return path


T = TypeVar("T")


def _on_device(operation: Callable[[], T]) -> T:
    """Run a direct operation; a device that cannot be opened or used is -ENODEV."""
    try:
        return operation()
    except CorruptRecord:
        raise
    except (StorageError, OSError) as exc:
        raise _refuse(-sp.ENODEV, DeviceMissing, str(exc)) from None


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    """`size` bytes, or None if the peer closed (or broke) the connection first."""
    chunks = bytearray()
    while len(chunks) < size:
        try:
            chunk = conn.recv(size - len(chunks))
        except TimeoutError:
            raise _Short() from None
        except OSError:
            return None
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


class _Payload:
    """The bytes after one header, read by struct sizes, counting what was taken."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self.taken_b = 0

    @property
    def conn(self) -> socket.socket:
        """The connection the request came on (REG_EVENT keeps a duplicate of it)."""
        return self._conn

    def take(self, size: int) -> bytes:
        self._conn.settimeout(PAYLOAD_TIMEOUT_S)
        raw = _recv_exact(self._conn, size)
        if raw is None:
            raise _Short()
        self.taken_b += size
        return raw

    def drain(self, header: Header) -> None:
        """Discard what a refused request still has in flight, by its announced length."""
        left = min(max(header.length - sp.HEADER_B - self.taken_b, 0), MAX_DRAIN_B)
        self._conn.settimeout(DRAIN_TIMEOUT_S)
        while left > 0:
            try:
                chunk = self._conn.recv(min(left, 65536))
            except OSError:
                return
            if not chunk:
                return
            left -= len(chunk)


def sanlock_socket_path(run_dir: str) -> str:
    return os.path.join(run_dir, sp.SOCKET_NAME)
