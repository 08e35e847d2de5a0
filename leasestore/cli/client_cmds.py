"""`leasestore client ...`: talk to the daemon, like `sanlock client`."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from leasestore import client
from leasestore.daemon import wire
from leasestore.specs import LockspaceSpec


def register(sub: Any) -> None:
    parser = sub.add_parser("client", help="ask the daemon (status, lockspaces, hosts)")
    parser.add_argument("--run-dir", help="the daemon's run dir")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, helptext: str, *, lockspace: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=helptext)
        if lockspace:
            p.add_argument("-s", dest="lockspace", required=True,
                           metavar="LS:HOST_ID:PATH:OFFSET" if name.endswith("lockspace")
                           else "LS")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(handler=run_client, action=name)
        return p

    action("status", "daemon state and its lockspaces", lockspace=False)
    add = action("add_lockspace", "join a lockspace (acquire our host_id)")
    add.add_argument("-o", dest="io_timeout", type=int, default=0, help="io_timeout (s)")
    add.add_argument("--async", dest="asynchronous", action="store_true",
                     help="return at once; poll with inq_lockspace")
    rem = action("rem_lockspace", "leave a lockspace (release our host_id)")
    rem.add_argument("--async", dest="asynchronous", action="store_true")
    inq = action("inq_lockspace", "is the lockspace joined?")
    inq.add_argument("--wait", action="store_true")
    action("host_status", "every host's liveness as this host sees it")
    action("renewal", "this host's renewal history")


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print(text)


def _host_lines(hosts: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"h {h['host_id']} gen {h['generation']} timestamp {h['timestamp']} "
        f"{h['state'].upper()} {h['host_name']}" + (f" ERROR {h['error']}" if 'error' in h else "")
        for h in hosts
    )


def _renewal_lines(history: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"timestamp={r['timestamp']} read_us={r['read_us']} write_us={r['write_us']} "
        f"total_us={r['total_us']}" + (f" error={r['error']}" if r["error"] else "")
        for r in history
    )


def run_client(args: argparse.Namespace) -> int:
    if args.run_dir:
        os.environ[wire.RUN_DIR_ENV] = args.run_dir
    name = args.action
    if name == "status":
        data = client.status()
        lines = [f"daemon {data['host_name']} pid {data['pid']} watchdog {data['watchdog']}"]
        lines += [f"s {ls['lockspace']}:{ls['host_id']}:{ls['path']}:{ls['offset']} "
                  f"{ls['state']} gen {ls['generation']}" for ls in data["lockspaces"]]
        _print(args, data, "\n".join(lines))
        return 0
    if name in ("host_status", "renewal"):
        lockspace = args.lockspace.split(":", 1)[0]
        if name == "host_status":
            hosts = client.get_hosts(lockspace)
            _print(args, hosts, _host_lines(hosts))
        else:
            history = client.renewal_history(lockspace)
            _print(args, history, _renewal_lines(history))
        return 0
    spec = LockspaceSpec.parse(args.lockspace)
    common = (spec.name, spec.host_id, spec.path, spec.offset_b)
    if name == "add_lockspace":
        client.add_lockspace(*common, iotimeout=args.io_timeout, wait=not args.asynchronous)
        _print(args, {"ok": True}, f"joined {spec.name} as host_id {spec.host_id}"
               if not args.asynchronous else f"adding {spec.name}")
    elif name == "rem_lockspace":
        client.rem_lockspace(*common, wait=not args.asynchronous)
        _print(args, {"ok": True}, f"left {spec.name}")
    else:
        joined = client.inq_lockspace(*common, wait=args.wait)
        _print(args, {"joined": joined}, {True: "joined", False: "not joined",
                                          None: "in progress"}[joined])
        return 0 if joined else 1
    return 0
