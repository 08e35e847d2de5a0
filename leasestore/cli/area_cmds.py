"""`leasestore format` and `leasestore dump`: daemon-less work on lease areas."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tqdm import tqdm

from leasestore import direct
from leasestore.errors import UsageError
from leasestore.specs import LockspaceSpec, ResourceSpec, split_escaped
from leasestore.timeouts import DEFAULT_IO_TIMEOUT_S
from leasestore.units import decimal_int, parse_size


def register(sub: Any) -> None:
    fmt = sub.add_parser(
        "format",
        help="initialise a lockspace or resource area (byte-identical to sanlock direct init)",
    )
    add_format_arguments(fmt)
    fmt.set_defaults(handler=run_format)
    dmp = sub.add_parser("dump", help="list the lease records in a range of a device or file")
    add_dump_arguments(dmp)
    dmp.set_defaults(handler=run_dump)


def add_format_arguments(fmt: argparse.ArgumentParser) -> None:
    target = fmt.add_mutually_exclusive_group(required=True)
    target.add_argument("-s", dest="lockspace", metavar="NAME:0:PATH:OFFSET")
    target.add_argument("-r", dest="resource", metavar="LOCKSPACE:NAME:PATH:OFFSET")
    fmt.add_argument("-Z", "--sector-size", type=decimal_int, choices=(512, 4096))
    fmt.add_argument("-A", "--align", type=parse_size, metavar="1M|2M|4M|8M")
    fmt.add_argument("-o", "--io-timeout", type=decimal_int, default=DEFAULT_IO_TIMEOUT_S,
                     help="io_timeout written into lockspace sectors (default 10)")
    fmt.add_argument("--num-hosts", type=decimal_int, default=0, help="resource: dblocks in use")
    fmt.add_argument("--count", type=decimal_int, default=1,
                     help="resource: format this many leases in consecutive slots; NAME must "
                          "hold {} for the number (0, 1, ...), e.g. -r LS:vm{}:PATH:OFFSET")
    fmt.add_argument("--force", action="store_true", help="overwrite an area holding records")


def add_dump_arguments(dmp: argparse.ArgumentParser) -> None:
    dmp.add_argument("target", metavar="PATH[:OFFSET[:LENGTH]]", nargs="+",
                     help="one range, or several (each disk of a lease, say), dumped in turn")
    dmp.add_argument("--json", action="store_true", help="print one JSON array")
    dmp.add_argument("--all", action="store_true", help="also list never-acquired host sectors")


def run_format(args: argparse.Namespace) -> int:
    if args.lockspace:
        ls = LockspaceSpec.parse(args.lockspace)
        geometry = direct.format_lockspace(
            ls.path, ls.name, ls.offset_b, sector_size=args.sector_size, align=args.align,
            io_timeout_s=args.io_timeout, force=args.force,
        )
        print(f"formatted lockspace {ls.name!r} at {ls.path}:{ls.offset_b} ({geometry}, "
              f"{geometry.max_hosts} hosts)")
        return 0
    res = ResourceSpec.parse(args.resource.replace("{}", "0"))  # a valid name to parse
    if args.count != 1 or "{}" in args.resource:
        if len(res.disks) != 1:
            raise UsageError("--count formats leases on one disk")
        return _format_many(args, res)
    geometry = direct.format_resource(
        res.path, res.lockspace, res.name, res.offset_b, sector_size=args.sector_size,
        align=args.align, num_hosts=args.num_hosts, force=args.force,
        extra_disks=res.disks[1:],
    )
    places = ", ".join(f"{path}:{offset_b}" for path, offset_b in res.disks)
    print(f"formatted resource {res.name!r} of lockspace {res.lockspace!r} at {places} "
          f"({geometry})")
    return 0


def _format_many(args: argparse.Namespace, res: ResourceSpec) -> int:
    template = split_escaped(args.resource)[1]
    if args.count < 1:
        raise UsageError("--count must be at least 1")
    if template.count("{}") != 1:
        raise UsageError(f"with --count, the resource name must hold {{}} once for the "
                         f"number, not {template!r}")
    names = [template.replace("{}", str(i)) for i in range(args.count)]
    with tqdm(total=len(names), unit=" leases", file=sys.stderr, leave=False,
              disable=not sys.stderr.isatty()) as progress:
        geometry = direct.format_resources(
            res.path, res.lockspace, names, res.offset_b, sector_size=args.sector_size,
            align=args.align, num_hosts=args.num_hosts, force=args.force,
            on_written=progress.update)
    last = res.offset_b + (len(names) - 1) * geometry.area_size
    print(f"formatted {len(names)} resources {names[0]!r}..{names[-1]!r} of lockspace "
          f"{res.lockspace!r} at {res.path}:{res.offset_b}..{last} ({geometry})")
    return 0


def parse_dump_target(text: str) -> tuple[str, int, int | None]:
    parts = split_escaped(text)
    if len(parts) > 3 or not parts[0]:
        raise UsageError(f"expected PATH[:OFFSET[:LENGTH]], not {text!r}")
    offset = parse_size(parts[1]) if len(parts) > 1 and parts[1] else 0
    length = parse_size(parts[2]) if len(parts) > 2 and parts[2] else None
    return parts[0], offset, length


def run_dump(args: argparse.Namespace) -> int:
    """Each target's records in turn (with several, each under a `== TARGET` line, or in JSON
    as one {"target", "records"} object per target); exit 1 if any record is an error."""
    targets = [(text, parse_dump_target(text)) for text in args.target]  # all checked first
    several = len(targets) > 1
    documents: list[dict[str, object]] = []
    failed = False
    for text, (path, offset, length) in targets:
        records = direct.dump(path, offset, length)
        failed = failed or any(r.error for r in records)
        shown = [r for r in records if args.all or r.kind != "delta" or r.acquired or r.error]
        hidden = len(records) - len(shown)
        if args.json:
            documents.append({"target": text, "records": [r.to_json() for r in shown]})
            continue
        if several:
            print(f"== {text}")
        print_table(shown)
        if hidden:
            print(f"({hidden} never-acquired host sectors not shown; --all lists them)")
    if args.json:
        json.dump(documents if several else documents[0]["records"], sys.stdout, indent=1)
        print()
    return 1 if failed else 0


def print_table(records: list[direct.DumpRecord]) -> None:
    print(f"{'offset':>10} {'kind':<8} {'lockspace':<20} {'name':<24} {'id':>5} "
          f"{'own':>5} {'gen':>5} {'lver':>6} {'timestamp':>10} {'io':>3} {'flags':>5} "
          "host")
    for r in records:
        name = r.resource if r.resource is not None else (r.host_name or "")
        ident = "" if r.host_id is None else str(r.host_id)
        if r.error:
            print(f"{r.offset:>10} {r.kind:<8} {r.lockspace:<20} {name:<24} {ident:>5} "
                  f"ERROR {r.error}")
            continue
        print(f"{r.offset:>10} {r.kind:<8} {r.lockspace:<20} {name:<24} {ident:>5} "
              f"{r.owner_id:>5} {r.owner_generation:>5} {r.lver:>6} {r.timestamp:>10} "
              f"{r.io_timeout:>3} {r.flags:>#5x} {r.extra.get('owner_name', '')}".rstrip())
