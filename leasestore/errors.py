"""Every error leasestore raises, as one tree rooted at `LeasestoreError`.

Each class carries a stable integer `code`. Where sanlock has a code for the same condition we use
sanlock's (negative SANLK_* values), so a code seen in our logs means the same thing in theirs.
The daemon sends each error's class name and message in its reply detail; the client raises the
same class again (`ERROR_CLASSES`, by name, so classes that share a code stay apart).
"""

from __future__ import annotations


class LeasestoreError(Exception):
    """Base of every leasestore error. `code` is stable across versions."""

    code = -201

    @property
    def errno(self) -> int:
        """The code, under the name the sanlock binding's SanlockException uses."""
        return self.code


# --- on-disk records ------------------------------------------------------------------------


class CorruptRecord(LeasestoreError):
    """Bytes on disk that are not a valid record of the expected kind.

    A corrupt record is never interpreted as "free": callers must stop, not take over.
    """

    def __init__(self, record: str, detail: str, offset_b: int | None = None) -> None:
        self.record = record
        self.detail = detail
        self.offset_b = offset_b
        where = f" at offset {offset_b}" if offset_b is not None else ""
        super().__init__(f"{record}{where}: {detail}")

    def at(self, offset_b: int) -> CorruptRecord:
        """The same error, located at an absolute device offset."""
        return type(self)(self.record, self.detail, offset_b)


class TruncatedRecord(CorruptRecord):
    code = -220


class BadMagic(CorruptRecord):
    code = -223


class BadVersion(CorruptRecord):
    code = -224


class BadSectorSize(CorruptRecord):
    code = -225


class BadChecksum(CorruptRecord):
    code = -229


class BadDblockChecksum(CorruptRecord):
    code = -214


class BadRequestMagic(CorruptRecord):
    code = -270


class BadRequestVersion(CorruptRecord):
    code = -271


class BadGeometry(CorruptRecord):
    """A leader names a sector size / align combination sanlock does not define."""

    code = -230


class LeaseMismatch(LeasestoreError):
    """A valid record that belongs to another lockspace or resource than the one asked for."""


class WrongLockspace(LeaseMismatch):
    code = -226


class WrongResource(LeaseMismatch):
    code = -227


class NumHostsTooSmall(LeaseMismatch):
    code = -228


# --- storage -----------------------------------------------------------------------------------


class StorageError(LeasestoreError):
    """A device could not be opened, sized, read or written."""

    code = -201


class DeviceMissing(StorageError):
    pass


class DeviceTooSmall(StorageError):
    pass


class NotAligned(StorageError):
    pass


class DirectIOUnsupported(StorageError):
    pass


class IOFailed(StorageError):
    code = -201


class NoDiskMajority(StorageError):
    """Fewer than a majority of a multi-disk lease's disks answered with a valid copy."""

    code = -201


class IOTimeout(StorageError):
    """An I/O outlived its io_timeout; it was abandoned (its buffer stays pinned until reaped)."""

    code = -202


# --- user input and tools ----------------------------------------------------------------------


class UsageError(LeasestoreError):
    """Bad arguments: a malformed resource string, an invalid geometry, an out-of-range host_id."""

    code = -22


class AreaInUse(LeasestoreError):
    """The format tool found live records and was not told to --force."""

    code = -17


# --- the resource index (ondisk/rindex.py) ---------------------------------------------------


class BadRindexMagic(CorruptRecord):
    code = -274


class BadRindexVersion(CorruptRecord):
    code = -275


class RindexLockspace(LeasestoreError):
    """The index belongs to another lockspace."""

    code = -276


class RindexOffset(LeasestoreError):
    """An offset that is no slot of the index."""

    code = -277


class RindexDiff(LeasestoreError):
    """The entry at that offset names another resource."""

    code = -278


class RindexNotFound(LeasestoreError):
    """No entry names that resource (sanlock: -ENOENT)."""

    code = -2


class RindexFull(LeasestoreError):
    """Every slot of the index is in use (sanlock: -ENOSPC)."""

    code = -28


# --- delta leases ------------------------------------------------------------------------------


class HostIdInvalid(LeasestoreError):
    code = -231


class HostIdBusy(LeasestoreError):
    """Another host holds (or raced us for) the host_id."""

    code = -262


class RenewOwner(LeasestoreError):
    """Our own sector names another owner: someone took our host_id."""

    code = -260


class RenewDiff(LeasestoreError):
    """Our own sector differs from what we last wrote."""

    code = -261


# --- paxos leases ------------------------------------------------------------------------------


class DblockLver(LeasestoreError):
    """A ballot saw a dblock for a later lease version: someone else moved on."""

    code = -212


class DblockMbal(LeasestoreError):
    """A ballot saw a higher ballot number: a competing acquirer."""

    code = -213


class LeaderStale(LeasestoreError):
    """The leader is older than decisions recorded in dblocks and cannot be repaired from them
    (a late write rolled it back). Nobody may take the lease until its holder acts."""

    code = -215


class AcquireLver(LeasestoreError):
    """The lease's version is not the one the caller required (the fencing check)."""

    code = -240


class AcquireIdLive(LeasestoreError):
    """The lease is owned by a host that is alive."""

    code = -243


class AcquireOwned(LeasestoreError):
    """Another host committed this lease version first."""

    code = -244


class AcquireOwnedRetry(LeasestoreError):
    """The lease's owner was not yet seen to renew or to expire, and the acquire was asked
    not to wait for it (OWNER_NOWAIT; sanlock: -247)."""

    code = -247


class AcquireOther(LeasestoreError):
    """Our ballot committed another host's proposed value."""

    code = -245


class SharedHolders(LeasestoreError):
    """Live shared holders prevent an exclusive acquire (sanlock: -EAGAIN)."""

    code = -11


class RequestOld(LeasestoreError):
    """A request for a version the lease already reached."""

    code = -272


class RequestLver(LeasestoreError):
    """A request for a lower version than one already recorded."""

    code = -273


class ReleaseLver(LeasestoreError):
    code = -250


class ReleaseOwner(LeasestoreError):
    code = -251


class LeaseNotHeld(LeasestoreError):
    """Release or inquire of a lease the caller does not hold (sanlock: -EPERM/-ENOENT)."""

    code = -2


class LeaseAlreadyHeld(LeasestoreError):
    """The caller already holds this lease (sanlock: -EEXIST)."""

    code = -17


class LeaseAlreadyInMode(LeasestoreError):
    """A convert to the mode the lease is held in already (sanlock: -EALREADY)."""

    code = -114


class LeaseOrphaned(LeasestoreError):
    """The lease is an orphan on this host (its persistent holder exited): only an acquire
    with the orphan flag, in the orphan's mode, adopts it (sanlock: -EUCLEAN)."""

    code = -117


class LvbUnavailable(LeasestoreError):
    """The lease has no lock value block to use: it is not held here with the LVB flag, or
    its area has no LVB sector (sanlock: -EINVAL)."""

    code = -22


class LvbTooLarge(LeasestoreError):
    """More bytes than the lock value block's one sector holds (sanlock: -E2BIG)."""

    code = -7


class HostLeaseExpired(LeasestoreError):
    """Our host lease went id_renewal_fail_seconds without renewal; it must not be renewed."""

    code = -263


class NotRegistered(LeasestoreError):
    """Acquire or release on a connection (or for a pid) that is not registered."""

    code = -107


class LockspaceBusy(LeasestoreError):
    """rem_lockspace while resource leases are held in it (sanlock: -EBUSY)."""

    code = -16


class LockspaceNotJoined(LeasestoreError):
    """The lockspace is not held by this daemon (sanlock: -ENOSPC)."""

    code = -28


class LockspaceExists(LeasestoreError):
    code = -17


class PermissionDenied(LeasestoreError):
    """The caller may not do this (e.g. a non-root client changing lockspaces)."""

    code = -1


class ProtocolError(LeasestoreError):
    """A malformed or unsupported client message."""

    code = -71


class Cancelled(LeasestoreError):
    """An operation was stopped because its lockspace is being removed or the daemon stops."""

    code = -125


_ALL: list[type[LeasestoreError]] = []


def _collect(cls: type[LeasestoreError]) -> None:
    _ALL.append(cls)
    for sub in cls.__subclasses__():
        _collect(sub)


_collect(LeasestoreError)

ERROR_CLASSES: dict[str, type[LeasestoreError]] = {cls.__name__: cls for cls in _ALL}
"""Every error class by name: replies carry the name, so equal codes never collide."""
