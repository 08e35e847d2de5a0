"""`leasestore direct VERB`: lease work without a daemon, shaped like `sanlock direct`.

Each verb prints `VERB done CODE` (0, or the sanlock code of the error) and then what it read
or wrote as `key value` lines; a failure also prints its one-line error and exits 1. `init` and
`dump` are the format and dump commands under sanlock's names. Nothing taken here is renewed
or fenced afterwards (see `daemonless`).
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable
from typing import Any

from leasestore import daemonless, ownership
from leasestore.cli import area_cmds
from leasestore.errors import LeasestoreError, UsageError
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import LEADER_CHECKSUM_OFFSET, Leader, LeaderMagic
from leasestore.ondisk.rindex import DEFAULT_MAX_RESOURCES
from leasestore.specs import LockspaceSpec, ResourceSpec, RindexSpec, parse_rindex_entry
from leasestore.timeouts import DEFAULT_IO_TIMEOUT_S, checked_io_timeout
from leasestore.units import decimal_float, decimal_int, parse_size

LOCKSPACE_HELP = "LOCKSPACE:HOST_ID:PATH:OFFSET"
RESOURCE_HELP = "LOCKSPACE:NAME:PATH:OFFSET"
RINDEX_HELP = "LOCKSPACE:PATH:OFFSET"


def register(sub: Any) -> None:
    parser = sub.add_parser("direct", help="read, take or give up leases on disk without a "
                                           "daemon (like sanlock direct)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, helptext: str, handler: Callable[[argparse.Namespace], int]
             ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = verbs.add_parser(name, help=helptext)
        p.set_defaults(handler=handler)
        return p

    area_cmds.add_format_arguments(verb("init", "the same as 'leasestore format'",
                                        area_cmds.run_format))
    area_cmds.add_dump_arguments(verb("dump", "the same as 'leasestore dump'",
                                      area_cmds.run_dump))
    p = verb("read_leader", "print a host's delta leader (-s) or a resource's leader (-r; "
                            "on several disks, the one a majority shows)", run_read_leader)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("-s", dest="lockspace", metavar=LOCKSPACE_HELP)
    target.add_argument("-r", dest="resource", metavar=RESOURCE_HELP)
    p = verb("write_leader", "repair: write a host's delta leader (-s) or a resource's leader "
                             "(-r, one disk's copy), with fields set, over what is there",
             run_write_leader)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("-s", dest="lockspace", metavar=LOCKSPACE_HELP)
    target.add_argument("-r", dest="resource", metavar=RESOURCE_HELP)
    p.add_argument("--set", dest="changes", action="append", default=[],
                   metavar="FIELD=VALUE",
                   help=f"a field to set: {', '.join(daemonless.WRITABLE_FIELDS)}")
    p.add_argument("-Z", "--sector-size", type=decimal_int, choices=(512, 4096),
                   help="the geometry, where the record there does not give it")
    p.add_argument("-A", "--align", type=parse_size, metavar="1M|2M|4M|8M")
    p.add_argument("--force", action="store_true",
                   help="write over a held lease, another lease's record or one that does "
                        "not verify")
    _register_rindex_verbs(verb)
    p = verb("read_id", "print who holds a host_id: generation, name, last renewal",
             run_read_id)
    p.add_argument("-s", dest="lockspace", metavar=LOCKSPACE_HELP, required=True)
    p = verb("live_id", "watch a host_id's record and say whether its host renews",
             run_live_id)
    p.add_argument("-s", dest="lockspace", metavar=LOCKSPACE_HELP, required=True)
    p.add_argument("--watch", type=decimal_float, metavar="SECONDS",
                   help="how long to watch (default: the host's renewal interval + 2 s)")
    p = verb("next_free", "print the lowest free host_id of a lockspace", run_next_free)
    p.add_argument("-s", dest="lockspace", metavar="LOCKSPACE:0:PATH:OFFSET", required=True)
    p = verb("align", "print the lease area size sanlock's align gives a device", run_align)
    p.add_argument("path")
    for name, helptext in (("acquire_id", "take a host_id (waits as a join does)"),
                           ("renew_id", "renew a held host_id once"),
                           ("release_id", "give a host_id up")):
        p = verb(name, helptext, run_host_id)
        p.add_argument("-s", dest="lockspace", metavar=LOCKSPACE_HELP, required=True)
        if name != "release_id":
            p.add_argument("-o", "--io-timeout", type=decimal_int, default=DEFAULT_IO_TIMEOUT_S,
                           help=f"io_timeout to hold it with (default {DEFAULT_IO_TIMEOUT_S})")
        if name == "acquire_id":
            p.add_argument("-e", "--host-name", default=socket.gethostname(),
                           help="the name written into the record (default: the hostname)")
    for name, helptext in (("acquire", "take a resource lease for a host whose host_id is "
                                       "held"),
                           ("release", "give up a resource lease a host holds")):
        p = verb(name, helptext, run_resource)
        p.add_argument("-r", dest="resource", metavar=RESOURCE_HELP + "[:LVER|:SH]",
                       required=True)
        host = p.add_mutually_exclusive_group(required=True)
        host.add_argument("-s", dest="lockspace", metavar=LOCKSPACE_HELP,
                          help="the host's lockspace area and host_id")
        host.add_argument("-i", dest="host_id", type=decimal_int,
                          help="the host_id (the lockspace area is looked for on the "
                               "resource's device)")
        p.add_argument("-g", dest="generation", type=decimal_int,
                       help="the host's generation (default: its record's current one)")


def _register_rindex_verbs(verb: Callable[[str, str, Callable[[argparse.Namespace], int]],
                                          argparse.ArgumentParser]) -> None:
    p = verb("format", "write a resource index (both of its areas)", run_rindex)
    p.add_argument("-x", dest="rindex", metavar=RINDEX_HELP, required=True)
    p.add_argument("-Z", "--sector-size", type=decimal_int, choices=(512, 4096))
    p.add_argument("-A", "--align", type=parse_size, metavar="1M|2M|4M|8M")
    p.add_argument("--max-resources", type=decimal_int, default=DEFAULT_MAX_RESOURCES)
    p.add_argument("--force", action="store_true", help="write over a live area")
    for name, helptext in (("lookup", "find a resource index entry (by name, offset, or the "
                                      "first free slot)"),
                           ("update", "set (or with -z 1 clear) the entry of a slot"),
                           ("rebuild", "rewrite the index's entries from its slots' leaders")):
        p = verb(name, helptext, run_rindex)
        p.add_argument("-x", dest="rindex", metavar=RINDEX_HELP, required=True)
        if name != "rebuild":
            p.add_argument("-e", dest="entry", metavar="NAME[:OFFSET]", default="")
        if name == "update":
            p.add_argument("-z", dest="remove", type=decimal_int, choices=(0, 1), default=0)


def _done(verb: str, error: LeasestoreError | None) -> None:
    print(f"{verb} done {0 if error is None else error.code}")


def _fields(leader: Leader) -> list[tuple[str, str]]:
    checksum = int.from_bytes(leader.encode()[LEADER_CHECKSUM_OFFSET:LEADER_CHECKSUM_OFFSET + 4],
                              "little")
    rows = [("magic", f"{leader.magic:#x}"), ("version", f"{leader.version:#x}"),
            ("flags", f"{leader.flags:#x}"), ("sector_size", str(leader.sector_size)),
            ("num_hosts", str(leader.num_hosts)), ("max_hosts", str(leader.max_hosts)),
            ("owner_id", str(leader.owner_id)),
            ("owner_generation", str(leader.owner_generation)), ("lver", str(leader.lver)),
            ("space_name", leader.space_name), ("resource_name", leader.resource_name),
            ("timestamp", str(leader.timestamp)), ("checksum", f"{checksum:#x}"),
            ("io_timeout", str(leader.io_timeout))]
    tail = (leader.write_id, leader.write_generation, leader.write_timestamp)
    names = (("extra1", "extra2", "extra3") if leader.magic == LeaderMagic.DELTA
             else ("write_id", "write_generation", "write_timestamp"))
    return rows + [(name, str(value)) for name, value in zip(names, tail, strict=True)]


def _print(rows: list[tuple[str, str]]) -> None:
    for key, value in rows:
        print(f"{key} {value}")


def _lockspace(text: str, *, host_id_needed: bool = True) -> LockspaceSpec:
    spec = LockspaceSpec.parse(text)
    if host_id_needed and spec.host_id < 1:
        raise UsageError(f"{text!r}: this verb needs a host_id of 1 or more")
    return spec


def _one_disk(text: str) -> ResourceSpec:
    spec = ResourceSpec.parse(text)
    if len(spec.disks) != 1:
        raise UsageError("write_leader repairs one disk's copy of a leader: name that disk "
                         "alone (LOCKSPACE:NAME:PATH:OFFSET)")
    return spec


def run_read_leader(args: argparse.Namespace) -> int:
    if args.lockspace:
        ls = _lockspace(args.lockspace)
        found = daemonless.read_leader(ls.path, ls.offset_b, ls.name, host_id=ls.host_id)
    else:
        found = daemonless.read_lease_leader(ResourceSpec.parse(args.resource))
    _done("read_leader", found.error)
    if found.leader is not None:
        _print(_fields(found.leader))
    if found.error is not None:
        raise found.error
    return 0


def run_rindex(args: argparse.Namespace) -> int:
    """sanlock direct's rindex verbs: `VERB done CODE`, then (lookup, update) the entry."""
    rx = RindexSpec.parse(args.rindex)
    if args.verb == "format":
        return _reported("format", lambda: _rindex_format(args, rx))
    if args.verb == "rebuild":
        return _reported("rebuild", lambda: _rindex_rebuild(rx))
    name, offset = parse_rindex_entry(args.entry)
    if args.verb == "update" and not offset:
        raise UsageError("update needs -e NAME:OFFSET")

    def act() -> list[tuple[str, str]]:
        if args.verb == "lookup":
            entry = daemonless.rindex_lookup(rx, name, offset)
            return [("name", f"{entry.name or '-'} offset {entry.offset_b}")]  # sanlock's line
        daemonless.rindex_update(rx, name, offset, remove=bool(args.remove))
        return []

    return _reported(args.verb, act)


def _rindex_rebuild(rx: RindexSpec) -> list[tuple[str, str]]:
    daemonless.rindex_rebuild(rx)
    return []  # sanlock prints only its done line


def _rindex_format(args: argparse.Namespace, rx: RindexSpec) -> list[tuple[str, str]]:
    daemonless.rindex_format(rx, args.sector_size, args.align, args.max_resources,
                             force=args.force)
    return []


def run_write_leader(args: argparse.Namespace) -> int:
    changes: dict[str, int] = {}
    for text in args.changes:
        name, sep, value = text.partition("=")
        if not sep:
            raise UsageError(f"--set {text!r}: expected FIELD=VALUE")
        if name not in daemonless.WRITABLE_FIELDS:
            raise UsageError(f"write_leader cannot set {name}; it sets "
                             f"{', '.join(daemonless.WRITABLE_FIELDS)}")
        try:
            changes[name] = decimal_int(value)
        except ValueError:
            raise UsageError(f"--set {text!r}: {value!r} is not a decimal number") from None
    if (args.sector_size is None) != (args.align is None):
        raise UsageError("-Z and -A go together")
    geometry = (Geometry(args.sector_size, args.align) if args.sector_size is not None
                else None)

    def write() -> list[tuple[str, str]]:
        if args.lockspace:
            ls = _lockspace(args.lockspace)
            done = daemonless.write_leader(ls.path, ls.offset_b, ls.name, host_id=ls.host_id,
                                           changes=changes, geometry=geometry,
                                           force=args.force)
        else:
            res = _one_disk(args.resource)
            done = daemonless.write_leader(res.path, res.offset_b, res.lockspace,
                                           resource=res.name, changes=changes,
                                           geometry=geometry, force=args.force)
        if done.forced is not None:
            print(f"forced: {done.forced}")
        return _fields(done.written)

    return _reported("write_leader", write)


def _reported(verb: str, action: Callable[[], list[tuple[str, str]]]) -> int:
    try:
        rows = action()
    except LeasestoreError as exc:
        _done(verb, exc)
        raise
    _done(verb, None)
    _print(rows)
    return 0


def _host_rows(host_id: int, leader: Leader) -> list[tuple[str, str]]:
    return [("host_id", str(host_id)), ("generation", str(leader.owner_generation)),
            ("timestamp", str(leader.timestamp)), ("io_timeout", str(leader.io_timeout)),
            ("host_name", leader.resource_name)]


def run_read_id(args: argparse.Namespace) -> int:
    ls = _lockspace(args.lockspace)
    return _reported("read_id", lambda: _host_rows(ls.host_id, daemonless.host_record(ls)))


def run_live_id(args: argparse.Namespace) -> int:
    ls = _lockspace(args.lockspace)

    def judge() -> list[tuple[str, str]]:
        record = daemonless.host_record(ls)
        watch_s = args.watch if args.watch is not None else (
            ownership.watch_needed_s([record.io_timeout]))
        view = ownership.watch_hosts(ls.path, ls.offset_b, ls.name, [ls.host_id],
                                     watch_s)[ls.host_id]
        return [("host_id", str(ls.host_id)), ("generation", str(view.generation)),
                ("host_name", view.host_name), ("state", view.state),
                ("watched_s", f"{watch_s:g}")]

    return _reported("live_id", judge)


def run_next_free(args: argparse.Namespace) -> int:
    ls = _lockspace(args.lockspace, host_id_needed=False)
    free = daemonless.next_free_host_id(ls)
    if free is None:
        raise LeasestoreError(f"every host_id of {ls.name!r} is in use")
    print(free)
    return 0


def run_align(args: argparse.Namespace) -> int:
    print(daemonless.alignment(args.path).area_size)
    return 0


def run_host_id(args: argparse.Namespace) -> int:
    ls = _lockspace(args.lockspace)
    if args.verb == "acquire_id":
        io_timeout = checked_io_timeout(args.io_timeout, "-o")
        return _reported(args.verb, lambda: _host_rows(
            ls.host_id, daemonless.acquire_host_id(ls, args.host_name, io_timeout)))
    if args.verb == "renew_id":
        io_timeout = checked_io_timeout(args.io_timeout, "-o")
        return _reported(args.verb, lambda: _host_rows(
            ls.host_id, daemonless.renew_host_id(ls, io_timeout)))
    return _reported(args.verb, lambda: _host_rows(ls.host_id, daemonless.release_host_id(ls)))


def _resource_host(args: argparse.Namespace, res: ResourceSpec) -> daemonless.ResourceHost:
    if args.lockspace:
        ls = _lockspace(args.lockspace)
    else:
        area = ownership.find_lockspace_area(res.lockspace, res.path)
        if area is None:
            raise UsageError(f"no area of lockspace {res.lockspace!r} found on {res.path}; "
                             "give it with -s")
        ls = LockspaceSpec(res.lockspace, args.host_id, res.path, area)
    return daemonless.resource_host(ls, args.generation)


def run_resource(args: argparse.Namespace) -> int:
    res = ResourceSpec.parse(args.resource)  # on several disks, too: majority rules

    def act() -> list[tuple[str, str]]:
        host = _resource_host(args, res)
        if args.verb == "acquire":
            held = daemonless.acquire_resource(res, host, shared=res.shared, lver=res.lver)
            leader = held.leader
            return [("lver", str(held.lver)), ("shared", str(int(held.shared))),
                    ("owner_id", str(leader.owner_id)),
                    ("owner_generation", str(leader.owner_generation))]
        released = daemonless.release_resource(res, host)
        return [("lver", str(released.lver)), ("owner_id", str(released.owner_id)),
                ("owner_generation", str(released.owner_generation))]

    return _reported(args.verb, act)

