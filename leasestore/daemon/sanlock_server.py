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
- a command leasestore does not implement yet is answered with -EOPNOTSUPP, never silence.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from leasestore import direct
from leasestore.daemon import sanlock_proto as sp
from leasestore.daemon import wire
from leasestore.daemon.sanlock_proto import Cmd, Header
from leasestore.errors import (
    CorruptRecord,
    LeaseAlreadyHeld,
    LeasestoreError,
    LockspaceBusy,
    LockspaceNotJoined,
    NotRegistered,
    ProtocolError,
    StorageError,
    UsageError,
)
from leasestore.lockspace import Lockspace, LockspaceState
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import LeaderMagic, decode_leader
from leasestore.resource import HeldResource
from leasestore.specs import MAX_PATH_B
from leasestore.storage.odirect import DirectDevice

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
    data: bytes | None
    """Bytes to send; None: no reply."""
    close: bool = False
    """Whether we end this (unregistered) connection after replying."""


def result_code(exc: LeasestoreError) -> int:
    """What sanlock replies for an error: its own code (negative errno or SANLK_*)."""
    return exc.code if exc.code < 0 else -201


class SanlockFrontEnd:
    """Serves one sanlock-protocol connection at a time per thread, for `daemon`."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        handlers: dict[int, Callable[[Header, socket.socket, Session], _Reply]] = {
            Cmd.REGISTER: self._register,
            Cmd.ADD_LOCKSPACE: self._add_lockspace,
            Cmd.REM_LOCKSPACE: self._rem_lockspace,
            Cmd.SHUTDOWN: self._shutdown,
            Cmd.STATUS: self._status,
            Cmd.ACQUIRE: self._acquire,
            Cmd.RELEASE: self._release,
            Cmd.INQUIRE: self._inquire,
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
        }
        self._handlers = handlers

    # -- framing -------------------------------------------------------------------------------

    def serve(self, conn: socket.socket, session: Session) -> None:
        """Answer headers on `conn` until the client closes it (or we end a one-shot)."""
        while True:
            conn.settimeout(None)
            raw = _recv_exact(conn, sp.HEADER_B)
            if raw is None:
                return
            if session.restrict & sp.RESTRICT_ALL:
                continue
            header = Header.decode(raw)
            if not header.acceptable():
                continue
            handler = self._handlers.get(header.cmd)
            if handler is None and header.cmd not in Cmd.__members__.values():
                continue
            reply = (self._unsupported(header, conn, session) if handler is None
                     else self._handle(handler, header, conn, session))
            if reply.data is not None:
                conn.sendall(reply.data, socket.MSG_NOSIGNAL)
            if reply.close and not session.registered:
                return

    def _handle(self, handler: Callable[[Header, socket.socket, Session], _Reply],
                header: Header, conn: socket.socket, session: Session) -> _Reply:
        try:
            return handler(header, conn, session)
        except _Short:
            return _Reply(header.reply(-sp.ENOTCONN))
        except _Code as refused:
            return _Reply(header.reply(refused.code))
        except LeasestoreError as exc:
            return _Reply(header.reply(result_code(exc)))
        except Exception:
            log.exception("internal error handling sanlock command %d", header.cmd)
            return _Reply(header.reply(-201))

    def _unsupported(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        _drain(conn, header, 0)
        log.info("sanlock command %s is not implemented: -EOPNOTSUPP", Cmd(header.cmd).name)
        return _Reply(header.reply(-sp.EOPNOTSUPP), close=True)

    # -- registration --------------------------------------------------------------------------

    def _register(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        try:
            self.daemon._register(wire.Register(), session)
            session.owner_name = str(session.peer.pid)
        except LeasestoreError as exc:  # REGISTER has no reply: the failure shows on use
            log.warning("sanlock register of pid %d refused: %s", session.peer.pid, exc)
        return _Reply(None)

    def _restrict(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        session.restrict = header.cmd_flags
        return _Reply(header.reply(0))

    def _killpath(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        path, args = sp.decode_killpath(_recv_payload(conn, sp.KILLPATH_B))
        target = self._target(header, session)
        target.killpath = [path, *args]
        target.killpath_pid = bool(header.cmd_flags & sp.KILLPATH_PID)
        return _Reply(header.reply(0))

    def _target(self, header: Header, session: Session) -> Session:
        """The registration a lease command acts for: this connection's (data2 SELF), or the
        registered process whose pid data2 names (-EBUSY / -ESRCH when there is none)."""
        if header.data2 == sp.SELF:
            if not session.registered:
                raise _Code(-sp.EBUSY)
            return session
        try:
            return self.daemon._target(session, header.data2)
        except NotRegistered:
            raise _Code(-sp.ESRCH) from None

    # -- lockspaces ----------------------------------------------------------------------------

    def _lockspace_payload(self, conn: socket.socket) -> sp.LockspaceStruct:
        return sp.LockspaceStruct.decode(_recv_payload(conn, sp.LOCKSPACE_B))

    def _existing(self, ls: sp.LockspaceStruct) -> Lockspace | None:
        """The joined lockspace `ls` names by its full key (host_id 0 matches any)."""
        with self.daemon._lock:
            found = self.daemon.lockspaces.get(ls.name)
        if found is None:
            return None
        spec = found.spec
        if (spec.path, spec.offset_b) != (ls.disk.path, ls.disk.offset):
            return None
        if ls.host_id and ls.host_id != spec.host_id:
            return None
        return found

    def _add_lockspace(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        ls = self._lockspace_payload(conn)
        if not ls.name or not ls.host_id or not ls.disk.path:
            return _Reply(header.reply(-sp.EINVAL))
        daemon = self.daemon
        with daemon._lock:
            same_name = daemon.lockspaces.get(ls.name)
            same_area = [other for other in daemon.lockspaces.values()
                         if (other.spec.path, other.spec.offset_b)
                         == (ls.disk.path, ls.disk.offset)]
            removing = ls.name in daemon._removing
        if same_name is not None:
            spec = same_name.spec
            if (spec.host_id, spec.path, spec.offset_b) != (ls.host_id, ls.disk.path,
                                                            ls.disk.offset):
                return _Reply(header.reply(-sp.EINVAL))
            if removing:
                return _Reply(header.reply(-sp.EAGAIN))
            if same_name.state == LockspaceState.JOINING:
                return _Reply(header.reply(-sp.EINPROGRESS))
            return _Reply(header.reply(-sp.EEXIST))
        if same_area:
            return _Reply(header.reply(-sp.EINVAL))
        command = wire.AddLockspace(ls.name, ls.host_id, ls.disk.path, ls.disk.offset,
                                    io_timeout=header.data,
                                    wait=not header.cmd_flags & sp.ADD_ASYNC)
        _validated(command)
        daemon._add_lockspace(command, session)
        return _Reply(header.reply(0))

    def _rem_lockspace(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        ls = self._lockspace_payload(conn)
        lockspace = self._existing(ls)
        if lockspace is None:
            return _Reply(header.reply(-sp.ENOENT))
        if lockspace.name in self.daemon._removing:
            return _Reply(header.reply(-sp.EINPROGRESS))
        spec = lockspace.spec
        command = wire.RemLockspace(spec.name, spec.host_id, spec.path, spec.offset_b,
                                    wait=not header.cmd_flags & sp.REM_ASYNC,
                                    unused=bool(header.cmd_flags & sp.REM_UNUSED))
        try:
            self.daemon._rem_lockspace(command, session)
        except LockspaceBusy:
            return _Reply(header.reply(-sp.EBUSY))
        return _Reply(header.reply(0))

    def _inq_lockspace(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        ls = self._lockspace_payload(conn)
        lockspace = self._existing(ls)
        if lockspace is None:
            return _Reply(header.reply(-sp.ENOENT))
        spec = lockspace.spec
        joined = self.daemon._inq_lockspace(
            wire.InqLockspace(spec.name, spec.host_id, spec.path, spec.offset_b,
                              wait=bool(header.cmd_flags & sp.INQ_WAIT)), session)
        code = 0 if joined else -sp.ENOENT if joined is False else -sp.EINPROGRESS
        return _Reply(header.reply(code))

    def _lockspaces(self) -> list[Lockspace]:
        with self.daemon._lock:
            return list(self.daemon.lockspaces.values())

    def _lockspace_struct(self, lockspace: Lockspace, with_pads: bool) -> bytes:
        spec = lockspace.spec
        flags = 0
        if lockspace.state == LockspaceState.JOINING:
            flags |= sp.LSF_ADD
        if lockspace.name in self.daemon._removing:
            flags |= sp.LSF_REM
        sector = lockspace.table.geometry.sector_size if lockspace.table else 512
        disk = sp.Disk(spec.path, spec.offset_b, sector if with_pads else 0)
        return sp.LockspaceStruct(spec.name, spec.host_id, 0 if with_pads else flags,
                                  disk).encode()

    def _get_lockspaces(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        structs = [self._lockspace_struct(ls, with_pads=False) for ls in self._lockspaces()]
        body = b"".join(structs)
        return _Reply(header.reply(0, len(body), data2=len(structs)) + body, close=True)

    def _get_hosts(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        ls = self._lockspace_payload(conn)
        with self.daemon._lock:
            lockspace = self.daemon.lockspaces.get(ls.name)
        if lockspace is None or lockspace.state == LockspaceState.JOINING:
            return _Reply(header.reply(-sp.ENOENT), close=True)
        if lockspace.table is None:
            return _Reply(header.reply(-sp.EAGAIN), close=True)
        hosts = [h for h in lockspace.hosts(ls.host_id) if ls.host_id or h.timestamp]
        body = b"".join(sp.Host(h.host_id, h.generation, h.timestamp, h.io_timeout,
                                int(h.state)).encode() for h in hosts)
        return _Reply(header.reply(0, len(body), data2=len(hosts)) + body, close=True)

    def _named_for_stream(self, conn: socket.socket) -> Lockspace | None:
        """HOST_STATUS and RENEWAL: a lockspace struct follows a header whose length is 32."""
        ls = self._lockspace_payload(conn)
        with self.daemon._lock:
            return self.daemon.lockspaces.get(ls.name)

    def _host_status(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        lockspace = self._named_for_stream(conn)
        if lockspace is None:
            return _Reply(header.reply(-sp.ENOSPC), close=True)
        records = []
        now_s = int(lockspace.valid_until_s - lockspace.timeouts.id_renewal_fail_s) \
            if lockspace.last_success_s else 0
        for host in lockspace.hosts():
            if not (host.last_live_s or host.owner_id):
                continue
            text = (f"last_check={now_s} last_live={int(host.last_live_s)} last_req=0 "
                    f"owner_id={host.owner_id} owner_generation={host.generation} "
                    f"timestamp={host.timestamp} io_timeout={host.io_timeout} "
                    f"owner_name={host.host_name}")
            records.append(sp.state_record(sp.StateType.HOST, "", text, data32=host.host_id,
                                           data64=host.timestamp))
        return _Reply(header.reply(0) + b"".join(records), close=True)

    def _renewal(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        lockspace = self._named_for_stream(conn)
        if lockspace is None:
            return _Reply(header.reply(-sp.ENOSPC), close=True)
        records = []
        for renewal in lockspace.history():
            text = (f"timestamp={renewal.timestamp} read_ms={renewal.read_us // 1000} "
                    f"write_ms={renewal.write_us // 1000} "
                    f"next_timeouts={int(renewal.error is not None)} next_errors=0")
            records.append(sp.state_record(sp.StateType.RENEWAL, "", text,
                                           data64=renewal.timestamp))
        return _Reply(header.reply(0, data2=lockspace.timeouts.io_timeout_s)
                      + b"".join(records), close=True)

    # -- resource leases -----------------------------------------------------------------------

    def _resources_with_disks(self, conn: socket.socket, count: int
                              ) -> list[tuple[sp.Resource, list[sp.Disk]]]:
        found = []
        for _ in range(count):
            resource = sp.Resource.decode(_recv_payload(conn, sp.RESOURCE_B))
            if not 1 <= resource.num_disks <= sp.MAX_DISKS:
                raise _Code(-sp.ERANGE)
            disks = [sp.Disk.decode(_recv_payload(conn, sp.DISK_B))
                     for _ in range(resource.num_disks)]
            found.append((resource, disks))
        return found

    def _acquire(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        count = header.data
        if count > sp.MAX_RESOURCES or count < 0:
            _drain(conn, header, 0)
            return _Reply(header.reply(-sp.E2BIG))
        try:
            wanted = self._resources_with_disks(conn, count)
        except _Code as refused:
            _drain(conn, header, 0)
            return _Reply(header.reply(refused.code))
        owner_name = sp.decode_options(_recv_payload(conn, sp.OPTIONS_B))
        target = self._target(header, session)
        target.owner_name = owner_name
        if header.cmd_flags & sp.ACQUIRE_ORPHAN_ONLY:
            return _Reply(header.reply(-sp.ENOENT))  # leasestore keeps no orphans (yet)
        if header.cmd_flags & sp.ACQUIRE_LVB or any(
                r.flags & sp.RES_PERSISTENT or len(disks) > 1 for r, disks in wanted):
            return _Reply(header.reply(-sp.EOPNOTSUPP))
        pid = 0 if target is session else target.peer.pid
        acquired: list[wire.Release] = []
        for resource, disks in wanted:
            disk = disks[0]
            command = wire.Acquire(resource.lockspace, resource.name, disk.path, disk.offset,
                                   pid=pid, shared=bool(resource.flags & sp.RES_SHARED),
                                   lver=resource.lver if resource.flags & sp.RES_LVER else -1)
            try:
                _validated(command)
                self.daemon._acquire(command, session)
            except (LeasestoreError, _Code) as exc:
                for release in acquired:
                    self._release_quietly(release, session)
                if isinstance(exc, _Code):
                    return _Reply(header.reply(exc.code))
                return _Reply(header.reply(_acquire_code(exc)))
            acquired.append(wire.Release(resource.lockspace, resource.name, disk.path,
                                         disk.offset, pid=pid))
        return _Reply(header.reply(0))

    def _release_quietly(self, release: wire.Release, session: Session) -> None:
        try:
            self.daemon._release(release, session)
        except LeasestoreError as exc:
            log.warning("undoing a partial acquire of %s: %s", release.resource, exc)

    def _release(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        count = 0 if header.cmd_flags & sp.REL_ALL else header.data
        if count > sp.MAX_RESOURCES or count < 0:
            _drain(conn, header, 0)
            return _Reply(header.reply(-sp.E2BIG))
        named = [sp.Resource.decode(_recv_payload(conn, sp.RESOURCE_B)) for _ in range(count)]
        if header.cmd_flags & (sp.REL_RENAME | sp.REL_ORPHAN):
            _drain(conn, header, count * sp.RESOURCE_B)
            return _Reply(header.reply(-sp.EOPNOTSUPP))
        target = self._target(header, session)
        held = self.daemon.resources.held_by(target.peer.pid)
        if header.cmd_flags & sp.REL_ALL:
            chosen = held
            result = 0
        else:
            chosen = []
            result = 0
            for resource in named:
                match = [h for h in held if h.key[:2] == (resource.lockspace, resource.name)]
                if not match:
                    result = -1
                chosen.extend(match)
        pid = 0 if target is session else target.peer.pid
        for lease in chosen:
            lockspace, name, path, offset = lease.key
            try:
                self.daemon._release(wire.Release(lockspace, name, path, offset, pid=pid),
                                     session)
            except LeasestoreError as exc:
                result = result or result_code(exc)
        return _Reply(header.reply(result))

    def _inquire(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        target = self._target(header, session)
        held = self.daemon.resources.held_by(target.peer.pid)
        if not held:
            return _Reply(header.reply(0))
        text = " ".join(_state_string(h) for h in held).encode() + b"\0"
        return _Reply(header.reply(0, len(text), data2=len(held)) + text)

    def _request(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        [(resource, disks)] = self._resources_with_disks(conn, 1)
        if len(disks) > 1:
            return _Reply(header.reply(-sp.EOPNOTSUPP))
        if header.cmd_flags & sp.REQUEST_NEXT_LVER or not resource.flags & sp.RES_LVER:
            lver = -1
        else:
            lver = resource.lver
        command = wire.RequestRelease(resource.lockspace, resource.name, disks[0].path,
                                      disks[0].offset, lver=lver, force_mode=header.data)
        _validated(command)
        self.daemon._request(command, session)
        return _Reply(header.reply(0))

    def _examine_lockspace(self, header: Header, conn: socket.socket,
                           session: Session) -> _Reply:
        ls = self._lockspace_payload(conn)
        self._examine(ls.name)
        return _Reply(header.reply(0))

    def _examine_resource(self, header: Header, conn: socket.socket,
                          session: Session) -> _Reply:
        resource = sp.Resource.decode(_recv_payload(conn, sp.RESOURCE_B))
        self._examine(resource.lockspace)
        return _Reply(header.reply(0))

    def _examine(self, name: str) -> None:
        with self.daemon._lock:
            lockspace = self.daemon.lockspaces.get(name)
        if lockspace is not None:
            threading.Thread(target=self.daemon._examine, args=(lockspace,),
                             daemon=True).start()

    # -- areas on disk -------------------------------------------------------------------------

    def _align(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        disk = sp.Disk.decode(_recv_payload(conn, sp.DISK_B))
        try:
            with DirectDevice(_checked_path(disk.path), readonly=True) as device:
                geometry = Geometry.default_for(device.sector_size)
        except (LeasestoreError, OSError):
            return _Reply(header.reply(-sp.ENODEV))
        return _Reply(header.reply(geometry.align_size))

    def _write_lockspace(self, header: Header, conn: socket.socket,
                         session: Session) -> _Reply:
        ls = self._lockspace_payload(conn)
        self.daemon._require_admin(session.peer, "format lockspaces")
        self._refuse_joined_area(ls.disk)
        sector, align = sp.geometry_flags(ls.flags)
        try:
            direct.format_lockspace(_checked_path(ls.disk.path), ls.name, ls.disk.offset,
                                    sector_size=sector if align else None,
                                    align=align if sector else None,
                                    io_timeout_s=header.data2 or
                                    self.daemon.config.io_timeout, force=True)
        except (StorageError, OSError):
            return _Reply(header.reply(-sp.ENODEV))
        return _Reply(header.reply(0))

    def _write_resource(self, header: Header, conn: socket.socket,
                        session: Session) -> _Reply:
        [(resource, disks)] = self._resources_with_disks(conn, 1)
        self.daemon._require_admin(session.peer, "format resources")
        if header.cmd_flags & sp.WRITE_CLEAR or len(disks) > 1:
            return _Reply(header.reply(-sp.EOPNOTSUPP))
        sector, align = sp.geometry_flags(resource.flags)
        try:
            direct.format_resource(_checked_path(disks[0].path), resource.lockspace,
                                   resource.name, disks[0].offset,
                                   sector_size=sector if align else None,
                                   align=align if sector else None,
                                   num_hosts=max(header.data, 0), force=True)
        except (StorageError, OSError):
            return _Reply(header.reply(-sp.ENODEV))
        return _Reply(header.reply(0))

    def _refuse_joined_area(self, disk: sp.Disk) -> None:
        """Formatting the area of a lockspace we have joined would erase live host leases."""
        for lockspace in self._lockspaces():
            if (lockspace.spec.path, lockspace.spec.offset_b) == (disk.path, disk.offset):
                raise _Code(-sp.EBUSY)

    def _read_lockspace(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        ls = self._lockspace_payload(conn)
        host_id = ls.host_id or 1
        try:
            with DirectDevice(_checked_path(ls.disk.path), readonly=True) as device:
                sector, _align = sp.geometry_flags(ls.flags)
                sector_size = sector or device.sector_size
                raw = device.read(ls.disk.offset + (host_id - 1) * sector_size, sector_size,
                                  READ_IO_TIMEOUT_S)
            leader = decode_leader(raw, (LeaderMagic.DELTA,))
        except CorruptRecord as exc:
            return _Reply(header.reply(result_code(exc), sp.LOCKSPACE_B) + ls.encode())
        except (LeasestoreError, OSError):
            return _Reply(header.reply(-sp.ENODEV, sp.LOCKSPACE_B) + ls.encode())
        if ls.name and ls.name != leader.space_name:
            return _Reply(header.reply(-226, sp.LOCKSPACE_B) + ls.encode())
        geometry = Geometry.from_leader_fields(leader.sector_size, leader.flags)
        found = sp.LockspaceStruct(leader.space_name, host_id,
                                   sp.flags_of_geometry(geometry.sector_size,
                                                        geometry.align_size), ls.disk)
        return _Reply(header.reply(0, sp.LOCKSPACE_B, data2=leader.io_timeout)
                      + found.encode())

    def _paxos_leader(self, disk: sp.Disk) -> tuple[int, sp.Resource | None, object]:
        try:
            leader = direct.read_paxos_leader(_checked_path(disk.path), disk.offset)
        except (CorruptRecord, StorageError) as exc:
            return result_code(exc), None, None
        except (LeasestoreError, OSError):
            return -sp.ENODEV, None, None
        geometry = Geometry.from_leader_fields(leader.sector_size, leader.flags)
        flags = sp.flags_of_geometry(geometry.sector_size, geometry.align_size)
        return 0, sp.Resource(leader.space_name, leader.resource_name, leader.lver,
                              flags=flags, num_disks=1), leader

    def _read_resource(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        [(asked, disks)] = self._resources_with_disks(conn, 1)
        code, found, _leader = self._paxos_leader(disks[0])
        body = (found or asked).encode()
        return _Reply(header.reply(code, len(body)) + body)

    def _read_resource_owners(self, header: Header, conn: socket.socket,
                              session: Session) -> _Reply:
        [(_asked, disks)] = self._resources_with_disks(conn, 1)
        code, found, _leader = self._paxos_leader(disks[0])
        if found is None:
            return _Reply(header.reply(code))
        owners = direct.resource_owners(_checked_path(disks[0].path), disks[0].offset)
        shared = any(owner.shared for owner in owners)
        resource = sp.Resource(found.lockspace, found.name, found.lver,
                               flags=found.flags | (sp.RES_SHARED if shared else 0),
                               num_disks=1)
        body = resource.encode() + b"".join(
            sp.Host(o.host_id, o.generation, o.timestamp, 0, 0).encode() for o in owners)
        return _Reply(header.reply(0, len(body), data2=len(owners)) + body)

    # -- daemon --------------------------------------------------------------------------------

    def _version(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        return _Reply(Header(sp.SM_MAGIC, sp.SM_PROTO, Cmd.VERSION, 0, sp.HEADER_B, 0, 0,
                             sp.VERSION_WORD).encode())

    def _shutdown(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        if header.data or not self._lockspaces():
            self.daemon._require_admin(session.peer, "shut the daemon down")
            log.info("shutdown requested by pid %d (force %d)", session.peer.pid, header.data)
            self.daemon.shutdown()
        return _Reply(None, close=True)

    def _shutdown_wait(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        if not header.data and self._lockspaces():
            return _Reply(header.reply(-sp.EBUSY))
        self.daemon._require_admin(session.peer, "shut the daemon down")
        self.daemon.shutdown()
        self.daemon.stopped.wait()
        return _Reply(Header(sp.SM_MAGIC, sp.SM_PROTO, 0, 0, sp.HEADER_B, 0, 0, 0).encode(),
                      close=True)

    def _status(self, header: Header, conn: socket.socket, session: Session) -> _Reply:
        daemon = self.daemon
        last_type = header.data
        config = daemon.config
        text = (f"our_host_name={config.host_name} use_watchdog="
                f"{int(daemon.watchdog.describe() != 'none')} renewal_history_size="
                f"{config.renewal_history_size} kill_grace_seconds=40 "
                f"version_str=leasestore-{daemon.version} version_hex="
                f"{sp.VERSION_WORD:08x} smproto_hex={sp.SM_PROTO:08x} "
                f"io_timeout={config.io_timeout} "
                f"watchdog_fire_timeout={config.watchdog_fire_timeout:g}")
        records = [sp.state_record(sp.StateType.DAEMON, config.host_name, text)]
        if last_type != 1:
            with daemon._lock:
                sessions = list(daemon._registered.values())
            for client in sessions:
                records.append(sp.state_record(
                    sp.StateType.CLIENT, client.owner_name,
                    f"pid={client.peer.pid} restricted={client.restrict:x}",
                    data32=client.peer.pid))
        if last_type not in (1, 2):
            for lockspace in self._lockspaces():
                listed = ("rem" if lockspace.name in daemon._removing else
                          "add" if lockspace.state == LockspaceState.JOINING else "spaces")
                ls_text = (f"list={listed} io_timeout={lockspace.timeouts.io_timeout_s} "
                           f"host_generation={lockspace.generation} "
                           f"renew_fail={int(lockspace.state == LockspaceState.RENEWAL_FAILING)} "
                           f"space_dead={int(lockspace.state == LockspaceState.FAILED)}")
                records.append(sp.state_record(sp.StateType.LOCKSPACE, lockspace.name, ls_text,
                                               data64=lockspace.spec.host_id)
                               + self._lockspace_struct(lockspace, with_pads=True))
        if last_type not in (1, 2, 3):
            for held in list(daemon.resources.held.values()):
                for pid in sorted(held.pids):
                    records.append(_resource_record(held, pid))
        return _Reply(header.reply(0, data2=header.data2) + b"".join(records), close=True)


class _Code(Exception):
    """A sanlock result decided before any lease operation."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _resource_record(held: HeldResource, pid: int) -> bytes:
    lockspace, name, path, offset = held.key
    shared = held.lease.shared
    sector = held.params.geometry.sector_size
    text = (f"list=held flags={sp.RES_SHARED if shared else 0:x} sector_size={sector} "
            f"align_size={held.params.geometry.align_size} lver={held.lease.lver}")
    resource = sp.Resource(lockspace, name, 0, flags=sp.RES_SHARED if shared else 0,
                           num_disks=1)
    disk = sp.Disk(path, offset, sector, sp.SELF)
    return (sp.state_record(sp.StateType.RESOURCE, name, text, data32=pid,
                            data64=held.lease.lver) + resource.encode() + disk.encode())


def _state_string(held: HeldResource) -> str:
    """sanlock's state string for one lease (paths escaped as libsanlock escapes them)."""
    lockspace, name, path, offset = held.key
    escaped = path.replace("\\", "\\\\").replace(":", "\\:").replace(" ", "\\ ")
    tail = "SH" if held.lease.shared else str(held.lease.lver)
    return f"{lockspace}:{name}:{escaped}:{offset}:{tail}"


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


def _validated(command: wire.Command) -> None:
    try:
        command.validate()
    except ProtocolError as exc:
        raise _Code(-sp.EINVAL) from exc


def _checked_path(path: str) -> str:
    if not path or len(path.encode()) > MAX_PATH_B:
        raise _Code(-sp.ENODEV)
    return path


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


def _recv_payload(conn: socket.socket, size: int) -> bytes:
    conn.settimeout(PAYLOAD_TIMEOUT_S)
    raw = _recv_exact(conn, size)
    if raw is None:
        raise _Short()
    return raw


def _drain(conn: socket.socket, header: Header, consumed_b: int) -> None:
    """Discard what a refused request still has in flight, by its announced length."""
    left = min(max(header.length - sp.HEADER_B - consumed_b, 0), MAX_DRAIN_B)
    conn.settimeout(DRAIN_TIMEOUT_S)
    while left > 0:
        try:
            chunk = conn.recv(min(left, 65536))
        except OSError:
            return
        if not chunk:
            return
        left -= len(chunk)


def sanlock_socket_path(run_dir: str) -> str:
    return os.path.join(run_dir, sp.SOCKET_NAME)
