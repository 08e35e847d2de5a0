"""Daemon-less operations on lease areas: format (init) and dump.

format writes exactly what `sanlock direct init -s/-r` writes for the same parameters:
- lockspace: the whole area in one write with host 1's sector carrying magic 0 (so a crash
  mid-format leaves no valid lockspace), then host 1's sector alone with the real magic;
- resource: the whole area in one write (leader, request record, zero dblocks).
Unlike sanlock, format first reads the target area and refuses, writing nothing, if it holds
any valid record, unless `force` is given.

dump walks a range of a device, finds every lockspace and resource area by its leader, and
lists its records. Sectors that should hold records but do not verify are listed with an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leasestore.errors import (
    AreaInUse,
    CorruptRecord,
    DeviceTooSmall,
    NotAligned,
    UsageError,
)
from leasestore.ondisk.areas import lockspace_area_image, resource_area_head, resource_area_image
from leasestore.ondisk.bulk import scan_dblocks
from leasestore.ondisk.dblock import decode_dblock, decode_mode_block
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import (
    Leader,
    LeaderMagic,
    decode_leader,
    encode_delta_sector,
    new_delta_leader,
)
from leasestore.ondisk.names import encode_name
from leasestore.ondisk.request import decode_request
from leasestore.storage.odirect import DirectDevice
from leasestore.timeouts import DEFAULT_IO_TIMEOUT_S, checked_io_timeout
from leasestore.units import MiB

WRITE_INIT_IO_TIMEOUT_S = 60.0
"""Bound on init I/O (sanlock's write_init_io_timeout)."""
SCAN_CHUNK_B = 8 * MiB
_LEADER_MAGICS = (LeaderMagic.DELTA, LeaderMagic.PAXOS, LeaderMagic.PAXOS_CLEAR)


def resolve_geometry(device: DirectDevice, sector_size: int | None, align: int | None) -> Geometry:
    """The geometry to format with: as given, or the device's sector size with its legacy align."""
    if sector_size is None and align is None:
        return Geometry.default_for(device.sector_size)
    if sector_size is None or align is None:
        raise UsageError("sector size and align must be given together (or neither)")
    geometry = Geometry(sector_size, align)
    if sector_size < device.sector_size:
        raise UsageError(
            f"{device.path} has {device.sector_size}-byte sectors; cannot format with {sector_size}"
        )
    return geometry


def _check_area(device: DirectDevice, offset_b: int, geometry: Geometry) -> None:
    if offset_b % geometry.align_size:
        raise NotAligned(
            f"offset {offset_b} is not a multiple of the align size {geometry.align_size}"
        )
    if offset_b + geometry.area_size > device.size_b:
        raise DeviceTooSmall(
            f"{device.path} is {device.size_b} bytes; the area {offset_b}..."
            f"{offset_b + geometry.area_size} does not fit"
        )


def format_lockspace(
    path: str,
    name: str,
    offset_b: int = 0,
    *,
    sector_size: int | None = None,
    align: int | None = None,
    io_timeout_s: int = DEFAULT_IO_TIMEOUT_S,
    force: bool = False,
) -> Geometry:
    """Initialise a lockspace area; returns the geometry used. Raises AreaInUse unless forced."""
    checked_io_timeout(io_timeout_s, "format io_timeout (-o)")
    with DirectDevice(path) as device:
        geometry = resolve_geometry(device, sector_size, align)
        _check_area(device, offset_b, geometry)
        if not force:
            refuse_if_in_use(device, offset_b, geometry)
        image = bytearray(lockspace_area_image(name, geometry, io_timeout_s))
        uncommitted = dataclasses.replace(new_delta_leader(name, geometry, io_timeout_s), magic=0)
        first = encode_delta_sector(uncommitted, geometry.sector_size)
        committed = bytes(image[: geometry.sector_size])
        image[: geometry.sector_size] = first
        device.write(offset_b, bytes(image), WRITE_INIT_IO_TIMEOUT_S)
        device.write(offset_b, committed, WRITE_INIT_IO_TIMEOUT_S)
    return geometry


def format_resource(
    path: str,
    lockspace: str,
    resource: str,
    offset_b: int = 0,
    *,
    sector_size: int | None = None,
    align: int | None = None,
    num_hosts: int = 0,
    force: bool = False,
    clear: bool = False,
    extra_disks: Sequence[tuple[str, int]] = (),
) -> Geometry:
    """Initialise a resource (paxos lease) area, on `path` and on each of `extra_disks` (a
    lease on several disks: the same area on each); returns the geometry used. Every disk is
    checked before any is written: with one holding records (and not `force`), or one whose
    sectors are larger than the first's geometry takes, nothing is written. With `clear`,
    leave it cleared (sanlock's WRITE_CLEAR): no read accepts the lease until it is
    initialised."""
    disks = [(path, offset_b), *extra_disks]
    if len(disks) > 4:
        raise UsageError(f"at most 4 disks per resource, not {len(disks)}")
    if len(set(disks)) < len(disks):
        raise UsageError("a resource's disks repeat; each copy needs its own place")
    with contextlib.ExitStack() as stack:
        devices = [stack.enter_context(DirectDevice(disk_path)) for disk_path, _ in disks]
        geometry = resolve_geometry(devices[0], sector_size, align)
        for device, (_, disk_offset_b) in zip(devices, disks, strict=True):
            resolve_geometry(device, geometry.sector_size, geometry.align_size)  # fits each
            _check_area(device, disk_offset_b, geometry)
        if not 0 <= num_hosts <= geometry.max_hosts:
            raise UsageError(f"num_hosts must be 0..{geometry.max_hosts}")
        if not force:
            for device, (_, disk_offset_b) in zip(devices, disks, strict=True):
                refuse_if_in_use(device, disk_offset_b, geometry)
        image = resource_area_image(lockspace, resource, geometry, num_hosts,
                                    cleared_at=int(time.monotonic()) if clear else None)
        for device, (_, disk_offset_b) in zip(devices, disks, strict=True):
            device.write(disk_offset_b, image, WRITE_INIT_IO_TIMEOUT_S)
    return geometry


FORMAT_BATCH_B = 16 * MiB
"""Resource areas formatted together go to the device in writes of up to this many bytes."""


def format_resources(
    path: str,
    lockspace: str,
    names: Sequence[str],
    offset_b: int = 0,
    *,
    sector_size: int | None = None,
    align: int | None = None,
    num_hosts: int = 0,
    force: bool = False,
    on_written: Callable[[int], object] = lambda _: None,
) -> Geometry:
    """Initialise one resource area per name in consecutive slots from offset_b, as
    `format_resource` would one by one. The whole range is checked first: if any area holds a
    valid record (and not `force`), nothing is written. `on_written(n)` hears that n more areas
    were written."""
    if not names:
        raise UsageError("no resource names to format")
    for name in names:  # every name checked before anything is written
        encode_name(name)
    if len(set(names)) < len(names):
        raise UsageError("resource names repeat; each lease needs its own")
    with DirectDevice(path) as device:
        geometry = resolve_geometry(device, sector_size, align)
        _check_area(device, offset_b, geometry)
        span = geometry.area_size * len(names)
        if offset_b + span > device.size_b:
            raise DeviceTooSmall(f"{device.path} is {device.size_b} bytes; {len(names)} areas "
                                 f"of {geometry.area_size} from {offset_b} do not fit")
        if not 0 <= num_hosts <= geometry.max_hosts:
            raise UsageError(f"num_hosts must be 0..{geometry.max_hosts}")
        if not force:
            refuse_if_in_use(device, offset_b, geometry, span)
        per_write = max(1, FORMAT_BATCH_B // geometry.area_size)
        area = geometry.area_size
        image = bytearray(min(per_write, len(names)) * area)  # zeros but for each area's head
        for first in range(0, len(names), per_write):
            batch = names[first:first + per_write]
            for index, name in enumerate(batch):
                head = resource_area_head(lockspace, name, geometry, num_hosts)
                image[index * area:index * area + len(head)] = head
            device.write(offset_b + first * area, memoryview(image)[:len(batch) * area],
                         WRITE_INIT_IO_TIMEOUT_S)
            on_written(len(batch))
    return geometry


def refuse_if_in_use(device: DirectDevice, offset_b: int, geometry: Geometry,
                      span_b: int | None = None) -> None:
    found = [r for r in scan_range(device, offset_b, span_b or geometry.area_size)
             if r.error is None]
    if found:
        raise AreaInUse(
            f"{device.path}:{offset_b} already holds {describe_records(found)}; "
            "nothing was written (use --force to overwrite)"
        )


def describe_records(records: list[DumpRecord]) -> str:
    """A one-line summary such as "2000 delta records of lockspace 'ls' (1 acquired)"."""
    groups: dict[tuple[str, str], list[DumpRecord]] = {}
    for record in records:
        groups.setdefault((record.kind, record.lockspace), []).append(record)
    parts = []
    for (kind, lockspace), members in groups.items():
        if kind == "delta":
            acquired = sum(1 for m in members if m.owner_id or m.owner_generation)
            live = sum(1 for m in members if m.timestamp)
            parts.append(
                f"{len(members)} delta record(s) of lockspace {lockspace!r} "
                f"({acquired} ever acquired, {live} with a live timestamp)"
            )
        elif kind in ("paxos", "paxos-cleared"):
            names = ", ".join(repr(m.resource) for m in members[:3])
            parts.append(f"{len(members)} {kind} leader(s) in lockspace {lockspace!r} ({names})")
        else:
            parts.append(f"{len(members)} {kind} record(s)")
    return "; ".join(parts)


# --- dump -------------------------------------------------------------------------------------


@dataclass
class DumpRecord:
    """One listed sector. Fields that do not apply to the kind stay None."""

    offset: int
    kind: str
    lockspace: str = ""
    resource: str | None = None
    host_name: str | None = None
    host_id: int | None = None
    owner_id: int = 0
    owner_generation: int = 0
    lver: int = 0
    timestamp: int = 0
    io_timeout: int = 0
    flags: int = 0
    sector_size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def acquired(self) -> bool:
        return bool(self.owner_id or self.owner_generation or self.timestamp)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return {k: v for k, v in data.items() if v is not None}


def scan_range(device: DirectDevice, start_b: int, length_b: int) -> Iterator[DumpRecord]:
    """Every record in [start_b, start_b + length_b), found by leader magic, area by area."""
    end = min(device.size_b, start_b + length_b)
    step = device.sector_size
    pos = start_b - start_b % step
    while pos < end:
        chunk = device.read(pos, min(SCAN_CHUNK_B, end - pos), WRITE_INIT_IO_TIMEOUT_S)
        magics = np.frombuffer(chunk, dtype="<u4")[:: step // 4]
        hits = np.flatnonzero(np.isin(magics, np.array(_LEADER_MAGICS, dtype="<u4")))
        if hits.size == 0:
            pos += len(chunk)
            continue
        here = pos + int(hits[0]) * step
        area_len = yield from _scan_area(device, here, end)
        pos = here + max(area_len, step)


def _scan_area(
    device: DirectDevice, offset_b: int, end_b: int
) -> Generator[DumpRecord, None, int]:
    """Records of the area whose first sector (a leader) is at offset_b; returns the area length."""
    first = device.read(offset_b, device.sector_size, WRITE_INIT_IO_TIMEOUT_S)
    try:
        leader = decode_leader(first)
        geometry = leader.geometry()
    except (CorruptRecord, UsageError) as exc:
        yield DumpRecord(offset=offset_b, kind="leader", error=str(exc))
        return device.sector_size
    length = min(geometry.area_size, end_b - offset_b)
    length -= length % device.sector_size
    if leader.magic == LeaderMagic.DELTA:
        yield from _delta_records(device, offset_b, length, geometry, leader.space_name)
    else:
        yield from _paxos_records(device, offset_b, length, geometry)
    return geometry.area_size


def _delta_records(
    device: DirectDevice, offset_b: int, length_b: int, geometry: Geometry, space: str
) -> Iterator[DumpRecord]:
    ss = geometry.sector_size
    count = min(geometry.max_hosts, length_b // ss)
    buf = device.read(offset_b, count * ss, WRITE_INIT_IO_TIMEOUT_S)
    for index in range(count):
        at = offset_b + index * ss
        try:
            leader = decode_leader(buf[index * ss:(index + 1) * ss], (LeaderMagic.DELTA,))
        except CorruptRecord as exc:
            yield DumpRecord(offset=at, kind="delta", lockspace=space, host_id=index + 1,
                             error=str(exc.at(at)))
            continue
        record = DumpRecord(
            offset=at, kind="delta", lockspace=leader.space_name, host_name=leader.resource_name,
            host_id=index + 1, owner_id=leader.owner_id,
            owner_generation=leader.owner_generation, lver=leader.lver,
            timestamp=leader.timestamp, io_timeout=leader.io_timeout, flags=leader.flags,
            sector_size=leader.sector_size,
        )
        if leader.space_name != space:
            record.error = f"lockspace name {leader.space_name!r} differs from {space!r}"
        yield record


def _paxos_records(
    device: DirectDevice, offset_b: int, length_b: int, geometry: Geometry
) -> Iterator[DumpRecord]:
    ss = geometry.sector_size
    head = device.read(offset_b, min(length_b, 2 * ss), WRITE_INIT_IO_TIMEOUT_S)
    leader = decode_leader(head)
    yield DumpRecord(
        offset=offset_b, kind=leader.kind, lockspace=leader.space_name,
        resource=leader.resource_name, owner_id=leader.owner_id,
        owner_generation=leader.owner_generation, lver=leader.lver, timestamp=leader.timestamp,
        io_timeout=leader.io_timeout, flags=leader.flags, sector_size=leader.sector_size,
        extra={"num_hosts": leader.num_hosts, "max_hosts": leader.max_hosts,
               "write_id": leader.write_id, "write_generation": leader.write_generation,
               "write_timestamp": leader.write_timestamp},
    )
    if len(head) < 2 * ss:
        return
    try:
        request = decode_request(head[ss:])
        if request.lver or request.force_mode:
            yield DumpRecord(offset=offset_b + ss, kind="request", lockspace=leader.space_name,
                             resource=leader.resource_name, lver=request.lver,
                             extra={"force_mode": request.force_mode})
    except CorruptRecord as exc:
        yield DumpRecord(offset=offset_b + ss, kind="request", lockspace=leader.space_name,
                         resource=leader.resource_name, error=str(exc.at(offset_b + ss)))
    yield from _dblock_records(device, offset_b, length_b, geometry, leader.num_hosts,
                               leader.space_name, leader.resource_name)


def _dblock_records(
    device: DirectDevice, offset_b: int, length_b: int, geometry: Geometry,
    num_hosts: int, space: str, resource: str,
) -> Iterator[DumpRecord]:
    ss = geometry.sector_size
    count = max(0, min(num_hosts, geometry.max_hosts, length_b // ss - 2))
    if count == 0:
        return
    buf = device.read(offset_b, (count + 2) * ss, WRITE_INIT_IO_TIMEOUT_S)
    rows = scan_dblocks(buf, ss, 2, count)
    touched = np.flatnonzero(
        (rows["mbal"] != 0) | (rows["checksum"] != 0) | (rows["mode_flags"] != 0)
        | (rows["lver"] != 0)
    )
    for index in touched.tolist():
        at = offset_b + (index + 2) * ss
        sector = buf[(index + 2) * ss:(index + 3) * ss]
        base = DumpRecord(offset=at, kind="dblock", lockspace=space, resource=resource,
                          host_id=index + 1)
        try:
            dblock = decode_dblock(sector)
        except CorruptRecord as exc:
            base.error = str(exc.at(at))
            yield base
            continue
        mode = decode_mode_block(sector)
        base.lver = dblock.lver
        base.flags = dblock.flags
        base.extra = {"mbal": dblock.mbal, "bal": dblock.bal, "inp": dblock.inp,
                      "inp2": dblock.inp2, "inp3": dblock.inp3,
                      "mode_flags": mode.flags, "mode_generation": mode.generation}
        yield base


def dump(path: str, offset_b: int = 0, length_b: int | None = None) -> list[DumpRecord]:
    """Every record in the range (the whole device from offset_b if no length)."""
    with DirectDevice(path, readonly=True) as device:
        if offset_b % device.sector_size:
            raise NotAligned(f"offset {offset_b} is not a multiple of {device.sector_size}")
        if offset_b >= device.size_b:
            raise DeviceTooSmall(f"{path} is {device.size_b} bytes; offset {offset_b} is beyond")
        length = device.size_b - offset_b if length_b is None else length_b
        return _named(list(scan_range(device, offset_b, length)))


def _named(records: list[DumpRecord]) -> list[DumpRecord]:
    """The records, with the host name (from the lockspace's delta records among them) added as
    `owner_name` to each resource leader's owner and each dblock's host."""
    names = {(r.lockspace, r.host_id): r.host_name for r in records
             if r.kind == "delta" and r.error is None and r.host_name and r.acquired}
    for record in records:
        host_id = record.owner_id if record.kind.startswith("paxos") else (
            record.host_id if record.kind == "dblock" else None)
        name = names.get((record.lockspace, host_id)) if host_id else None
        if name:
            record.extra["owner_name"] = name
    return records



def read_paxos_leader(path: str, offset_b: int = 0) -> Leader:
    """The verified paxos leader of the resource area at offset_b."""
    with DirectDevice(path, readonly=True) as device:
        raw = device.read(offset_b, device.sector_size, WRITE_INIT_IO_TIMEOUT_S)
    try:
        return decode_leader(raw, (LeaderMagic.PAXOS,))
    except CorruptRecord as exc:
        raise exc.at(offset_b) from None
