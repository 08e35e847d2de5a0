"""`leasestore who-holds`: a resource lease's owner and shared holders, with their hosts' names
and liveness, from a running daemon's host table or, without one, a watch of the lockspace's
delta sectors (see `ownership`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from tqdm import tqdm

from leasestore import client, ownership
from leasestore.cli.area_cmds import parse_dump_target
from leasestore.errors import LeasestoreError, UsageError
from leasestore.ownership import HostView, ResourceHolders
from leasestore.specs import LockspaceSpec, ResourceSpec
from leasestore.units import decimal_float, format_size


def register(sub: Any) -> None:
    who = sub.add_parser(
        "who-holds", help="who holds a resource lease (or every lease in a range), and is "
                          "that host alive",
        description="Reads the lease from disk; the holders' hosts are judged by the daemon "
                    "at --run-dir if it has joined their lockspace, else by watching their "
                    "delta sectors (-s, or the lockspace area found on the lease's device).")
    target = who.add_mutually_exclusive_group(required=True)
    target.add_argument("-r", dest="resource",
                        metavar="LOCKSPACE:NAME:PATH:OFFSET[:PATH:OFFSET...]",
                        help="the lease (on several disks: judged by majority)")
    target.add_argument("range", nargs="?", metavar="PATH[:OFFSET[:LENGTH]]",
                        help="every lease on this device, each read from it alone (a lease "
                             "on several disks: name them all with -r)")
    who.add_argument("-s", dest="lockspace", metavar="LOCKSPACE:0:PATH:OFFSET",
                     help="where the lockspace area is (default: looked for on the device)")
    who.add_argument("--run-dir", help="ask this daemon about the hosts (default: "
                                       f"${client.RUN_DIR_ENV} or {client.DEFAULT_RUN_DIR})")
    who.add_argument("--no-daemon", action="store_true", help="judge the hosts from disk only")
    who.add_argument("--watch", type=decimal_float, metavar="SECONDS",
                     help="without a daemon, watch the delta sectors this long (default: "
                          "long enough for each holder's host to renew once; 0: no watch)")
    who.add_argument("--json", action="store_true", help="print one JSON array")
    who.set_defaults(handler=run_who_holds)


def _leases(args: argparse.Namespace) -> list[ResourceHolders]:
    if args.resource:
        spec = ResourceSpec.parse(args.resource)
        if spec.lver is not None or spec.shared:
            raise UsageError("-r takes LOCKSPACE:NAME:PATH:OFFSET[:PATH:OFFSET...] (no :LVER "
                             "or :SH)")
        lease = ownership.lease_at(spec.disks)
        if lease.error is None and (lease.lockspace, lease.resource) != (spec.lockspace,
                                                                         spec.name):
            raise LeasestoreError(f"{spec.path}:{spec.offset_b} is lease {lease.resource!r} "
                                  f"of lockspace {lease.lockspace!r}, not {spec.name!r} of "
                                  f"{spec.lockspace!r}")
        return [lease]
    path, offset, length = parse_dump_target(args.range)
    return ownership.leases_in(path, offset, length)


def _daemon_hosts(lockspace: str, run_dir: str) -> dict[int, HostView] | None:
    """The daemon's view of the lockspace's hosts, or None if it cannot give one."""
    try:
        with client.using(run_dir):
            table = client.get_hosts(lockspace)
    except LeasestoreError:
        return None
    if not table:
        return None
    return {h["host_id"]: HostView(h["host_id"], h["generation"], h.get("host_name", ""),
                                   h["state"], h.get("renewed_ago_s"), "daemon")
            for h in table}


def _sleep_showing_progress(seconds: float, quiet: bool) -> None:
    steps = max(1, round(seconds * 10))
    for _ in tqdm(range(steps), desc="watching the holders' delta sectors", unit=" ticks",
                  file=sys.stderr, disable=quiet or not sys.stderr.isatty(), leave=False,
                  bar_format="{desc}: {elapsed} of " + f"{seconds:.0f} s" + " {bar}"):
        time.sleep(seconds / steps)


def _disk_hosts(lockspace: str, leases: list[ResourceHolders], args: argparse.Namespace
                ) -> tuple[dict[int, HostView], str | None]:
    """The hosts of the lockspace as a watch of its delta sectors shows them, and a note when
    its area could not be found."""
    path = leases[0].path
    if args.lockspace:
        spec = LockspaceSpec.parse(args.lockspace)
        if spec.name != lockspace:
            return {}, f"-s names lockspace {spec.name!r}, the leases are in {lockspace!r}"
        path, offset = spec.path, spec.offset_b
    else:
        found = ownership.find_lockspace_area(lockspace, path)
        if found is None:
            return {}, (f"no area of lockspace {lockspace!r} in the first "
                        f"{format_size(ownership.SEARCH_LIMIT_B)} of {path}: give -s")
        offset = found
    ids = {h.host_id for lease in leases for h in lease.holders}
    watch_s = args.watch if args.watch is not None else ownership.watch_needed_s(
        ownership.io_timeouts_of(path, offset, lockspace, ids))
    return ownership.watch_hosts(path, offset, lockspace, ids, watch_s,
                                 sleep=lambda s: _sleep_showing_progress(s, args.json)), None


def run_who_holds(args: argparse.Namespace) -> int:
    if args.no_daemon and args.run_dir:
        raise UsageError("--no-daemon and --run-dir contradict each other")
    leases = _leases(args)
    notes: list[str] = []
    judged: list[ResourceHolders] = [lease for lease in leases if lease.error]
    by_space: dict[str, list[ResourceHolders]] = {}
    for lease in leases:
        if lease.error is None:
            by_space.setdefault(lease.lockspace, []).append(lease)
    for lockspace, members in by_space.items():
        hosts: dict[int, HostView] | None = None
        if not any(lease.holders for lease in members):
            judged.extend(members)
            continue
        if not args.no_daemon:
            hosts = _daemon_hosts(lockspace, args.run_dir or client.run_dir())
        if hosts is None:
            hosts, note = _disk_hosts(lockspace, members, args)
            if note:
                notes.append(note)
        judged.extend(ownership.with_hosts(lease, hosts) for lease in members)
    judged.sort(key=lambda lease: (lease.path, lease.offset_b))
    if args.json:
        json.dump([_to_json(lease) for lease in judged], sys.stdout, indent=1)
        print()
    else:
        _print_table(judged)
    for note in notes:
        print(f"leasestore who-holds: {note}", file=sys.stderr)
    for lease in judged:
        if lease.error:
            print(f"leasestore who-holds: {lease.path}:{lease.offset_b}: {lease.error}",
                  file=sys.stderr)
    if not leases:
        print("leasestore who-holds: no resource lease in that range", file=sys.stderr)
    return 1 if any(lease.error for lease in judged) else 0


def _host_json(view: HostView | None) -> dict[str, Any] | None:
    if view is None:
        return None
    return {"host_name": view.host_name, "state": view.state, "generation": view.generation,
            "renewed_ago_s": view.renewed_ago_s, "source": view.source}


def _to_json(lease: ResourceHolders) -> dict[str, Any]:
    document: dict[str, Any] = {"path": lease.path, "offset": lease.offset_b}
    if lease.error:
        document["error"] = lease.error
        return document
    document.update({
        "lockspace": lease.lockspace, "resource": lease.resource, "lver": lease.lver,
        "holders": [{"host_id": h.host_id, "generation": h.generation, "shared": h.shared,
                     "host": _host_json(h.host), "gone": h.gone} for h in lease.holders],
    })
    return document


def _state_text(view: HostView | None, gone: str | None) -> tuple[str, str]:
    """(state, last renewal) cells for a holder."""
    if gone:
        return f"gone: {gone}", "-"
    if view is None:
        return "unknown (no lockspace area, no daemon)", "-"
    state = f"{view.state} ({view.source})"
    if view.renewed_ago_s is None:
        return state, "not seen"
    if view.source == "disk":
        return state, f"within {view.renewed_ago_s:.0f} s"
    return state, f"{view.renewed_ago_s:.1f} s ago"


def _print_table(leases: list[ResourceHolders]) -> None:
    rows = [("RESOURCE", "LOCKSPACE", "AT", "LVER", "HOLDER", "HOST STATE", "LAST RENEWAL")]
    for lease in leases:
        at = f"{lease.path}:{lease.offset_b}"
        if lease.error:
            rows.append(("?", "?", at, "-", f"error: {lease.error}", "", ""))
            continue
        if not lease.holders:
            rows.append((lease.resource or "", lease.lockspace, at, str(lease.lver), "free",
                         "", ""))
        for h in lease.holders:
            name = h.host.host_name if h.host and h.host.host_name else "?"
            holder = (f"{h.host_id} {name!r} gen {h.generation} "
                      f"{'shared' if h.shared else 'exclusive'}")
            state, renewed = _state_text(h.host, h.gone)
            rows.append((lease.resource or "", lease.lockspace, at, str(lease.lver), holder,
                         state, renewed))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
