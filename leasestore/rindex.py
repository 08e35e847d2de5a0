"""The resource index's operations, as sanlock performs them (ondisk/rindex.py has the layout):
effect algorithms, run by the daemon's threads or, daemon-less, by `leasestore direct`.

- format: area 1 (header, no entries) and area 2 (the free `rindex_lease`), each written whole;
- lookup: by name (the first entry naming it), by offset (that slot's entry, which must carry
  the name if one is given), or with neither the first free slot;
- update: set (add) or clear (remove) the entry of the slot an offset names, in its sector;
- rebuild: an entry for every slot whose area holds a paxos leader (whatever its lockspace, as
  sanlock does), up to the end of the device; area 1 written whole;
- create / delete (`under_lease`, serialised by `rindex_lease`): create initialises the first
  free slot's resource area as `init -r` does and then sets its entry; delete clears the entry
  and then writes the area cleared (its leader's magic says so: no read accepts it).

Entries are not checksummed and two may name one resource (sanlock's create does not look for
the name); lookup by name finds the first.
"""

from __future__ import annotations

from collections.abc import Callable

from leasestore.effects import Algorithm, Now, Read, Sleep, Write
from leasestore.errors import (
    CorruptRecord,
    DeviceTooSmall,
    RindexDiff,
    RindexFull,
    RindexLockspace,
    RindexNotFound,
    StorageError,
)
from leasestore.ondisk.areas import resource_area_image
from leasestore.ondisk.leader import LeaderMagic, decode_leader
from leasestore.ondisk.rindex import (
    LEASE_NAME,
    RindexEntry,
    RindexHeader,
    area1_image,
    decode_entries,
    decode_header,
)
from leasestore.paxos import PaxosParams, acquire, release

HEADER_READ_B = 4096
"""The header is read with the largest sector size (its own is not known yet)."""


def formatting(path: str, header: RindexHeader, timeout_s: float) -> Algorithm[None]:
    yield Write(path, header.rx_offset_b, area1_image(header), timeout_s)
    yield Write(path, header.lease_offset_b,
                resource_area_image(header.lockspace, LEASE_NAME, header.geometry), timeout_s)


def reading(path: str, rx_offset_b: int, lockspace: str, timeout_s: float
            ) -> Algorithm[tuple[RindexHeader, list[RindexEntry]]]:
    """The header and every entry (RindexLockspace if the index is another lockspace's)."""
    head = yield Read(path, rx_offset_b, HEADER_READ_B, timeout_s)
    header = decode_header(head)
    if lockspace and header.lockspace != lockspace:
        raise RindexLockspace(f"the index at {path}:{rx_offset_b} is lockspace "
                              f"{header.lockspace!r}, not {lockspace!r}")
    area = yield Read(path, rx_offset_b, header.geometry.align_size, timeout_s)
    return header, decode_entries(area, header)


def lookup(header: RindexHeader, entries: list[RindexEntry], name: str, offset_b: int
           ) -> RindexEntry:
    """The entry asked for (see the module docstring); a free slot's has no name."""
    if offset_b:
        entry = entries[header.slot_of(offset_b)]
        if entry.free:
            raise RindexNotFound(f"no entry for offset {offset_b}")
        if name and entry.name != name:
            raise RindexDiff(f"the entry at offset {offset_b} is {entry.name!r}, not {name!r}")
        return RindexEntry(entry.name, offset_b, entry.flags)
    if name:
        for slot, entry in enumerate(entries):
            if not entry.free and entry.name == name:
                return RindexEntry(name, header.slot_offset(slot), entry.flags)
        raise RindexNotFound(f"no entry names {name!r}")
    for slot, entry in enumerate(entries):
        if entry.free:
            return RindexEntry("", header.slot_offset(slot))
    raise RindexFull(f"every one of the index's {header.slots} slots is in use")


def _write_entry(path: str, header: RindexHeader, slot: int, entry: RindexEntry,
                 timeout_s: float) -> Algorithm[None]:
    """Rewrite the sector holding entry `slot` with that entry changed."""
    ss = header.geometry.sector_size
    at = header.entry_at(slot)
    sector_at = header.rx_offset_b + at - at % ss
    sector = bytearray((yield Read(path, sector_at, ss, timeout_s)))
    sector[at % ss:at % ss + len(entry.encode())] = entry.encode()
    yield Write(path, sector_at, bytes(sector), timeout_s)


def updating(path: str, header: RindexHeader, name: str, offset_b: int, remove: bool,
             timeout_s: float) -> Algorithm[RindexEntry]:
    """Set the entry of the slot at offset_b to `name` (or clear it)."""
    slot = header.slot_of(offset_b)
    entry = RindexEntry() if remove else RindexEntry(name, header.slot_offset(slot))
    yield from _write_entry(path, header, slot, entry, timeout_s)
    return RindexEntry(name, header.slot_offset(slot))


def rebuilding(path: str, header: RindexHeader, timeout_s: float) -> Algorithm[int]:
    """Entries from the slots' leaders, up to the device's end; returns how many were set."""
    entries: list[RindexEntry] = []
    for slot in range(header.slots):
        try:
            raw = yield Read(path, header.slot_offset(slot), header.geometry.sector_size,
                             timeout_s)
        except DeviceTooSmall:
            break  # past the end of the device
        try:
            leader = decode_leader(raw, (LeaderMagic.PAXOS,))
        except CorruptRecord:
            entries.append(RindexEntry())
            continue
        entries.append(RindexEntry(leader.resource_name, header.slot_offset(slot)))
    yield Write(path, header.rx_offset_b, area1_image(header, entries), timeout_s)
    return sum(not e.free for e in entries)


def creating(path: str, header: RindexHeader, entries: list[RindexEntry], name: str,
             num_hosts: int, timeout_s: float) -> Algorithm[RindexEntry]:
    """Initialise the first free slot's resource for `name`, then set its entry."""
    free = lookup(header, entries, "", 0)
    slot = header.slot_of(free.offset_b)
    yield Write(path, free.offset_b,
                resource_area_image(header.lockspace, name, header.geometry, num_hosts),
                timeout_s)
    entry = RindexEntry(name, free.offset_b)
    yield from _write_entry(path, header, slot, entry, timeout_s)
    return entry


def deleting(path: str, header: RindexHeader, entries: list[RindexEntry], name: str,
             offset_b: int, timeout_s: float) -> Algorithm[RindexEntry]:
    """Clear the entry naming `name` (at offset_b, if given), then clear its resource area."""
    found = lookup(header, entries, name, offset_b)
    yield from _write_entry(path, header, header.slot_of(found.offset_b), RindexEntry(),
                            timeout_s)
    now_s: float = yield Now()
    yield Write(path, found.offset_b,
                resource_area_image(header.lockspace, found.name, header.geometry,
                                    cleared_at=max(1, int(now_s))), timeout_s)
    return found


RELEASE_ATTEMPTS = 3


def under_lease(params: PaxosParams, body: Callable[[], Algorithm[RindexEntry]]
                ) -> Algorithm[RindexEntry]:
    """Run `body` holding the index's `rindex_lease` (acquired exclusively, then released;
    a release that fails is tried again every io_timeout, RELEASE_ATTEMPTS times in all:
    until it lands, other hosts' index changes wait for our host lease). The caller keeps
    two of its own from running at once: to the lease they are one host."""
    held = yield from acquire(params)
    try:
        return (yield from body())
    finally:
        for attempt in range(RELEASE_ATTEMPTS):
            try:
                yield from release(params, held)
                break
            except StorageError:
                if attempt == RELEASE_ATTEMPTS - 1:
                    raise
                yield Sleep(params.io_timeout_s)

