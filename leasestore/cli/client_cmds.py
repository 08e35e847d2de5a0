"""`leasestore client ...`: talk to the daemon, like `sanlock client`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

from leasestore import client
from leasestore.cli.progress import while_waiting
from leasestore.errors import UsageError
from leasestore.specs import LockspaceSpec, ResourceSpec
from leasestore.units import decimal_int


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
    add.add_argument("-o", dest="io_timeout", type=decimal_int, default=0, help="io_timeout (s)")
    add.add_argument("--async", dest="asynchronous", action="store_true",
                     help="return at once; poll with inq_lockspace")
    rem = action("rem_lockspace", "leave a lockspace (release our host_id)")
    rem.add_argument("--async", dest="asynchronous", action="store_true")
    inq = action("inq_lockspace", "is the lockspace joined?")
    inq.add_argument("--wait", action="store_true")
    action("host_status", "every host's liveness as this host sees it")
    action("renewal", "this host's renewal history")
    config = action("set_config", "mark a lockspace used (its removal waits) or unused")
    config.add_argument("-u", dest="used", type=decimal_int, choices=(0, 1))
    config.add_argument("-O", dest="used_by_orphans", type=decimal_int, choices=(0, 1),
                        help="1: a removal waits while the lockspace has orphans")
    action("log_dump", "print the daemon's recent log lines", lockspace=False)
    event = action("set_event", "send a host an event (its daemon's listeners get it)")
    event.add_argument("-i", dest="host_id", type=decimal_int, required=True)
    event.add_argument("-g", dest="generation", type=decimal_int, default=0,
                       help="the host's generation (default: its current one)")
    event.add_argument("-e", dest="event", type=decimal_int, required=True)
    event.add_argument("-d", dest="data", type=decimal_int, default=0)
    _register_resource_actions(actions)


def _register_resource_actions(actions: Any) -> None:
    def resource_action(name: str, helptext: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=helptext)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(handler=run_resource, action=name)
        return p

    for name, helptext in (("acquire", "acquire a lease for a registered pid (root)"),
                           ("release", "release a registered pid's lease (root)")):
        p = resource_action(name, helptext)
        p.add_argument("-r", dest="resources", action="append", required=True,
                       metavar="LS:RES:PATH:OFFSET[:LVER|:SH]")
        p.add_argument("-p", dest="pid", type=decimal_int, required=True)
        p.add_argument("--shared", action="store_true")
        p.add_argument("-O", dest="orphan", type=decimal_int, choices=(0, 1), default=0,
                       help="acquire: adopt an orphan of the lease")
        p.add_argument("-P", dest="persistent", type=decimal_int, choices=(0, 1), default=0,
                       help="acquire: keep the lease as an orphan if the pid exits")
    conv = resource_action("convert", "turn a registered pid's lease shared (RES:SH) or "
                                      "exclusive (root)")
    conv.add_argument("-r", dest="resources", action="append", required=True,
                      metavar="LS:RES:PATH:OFFSET[:SH]")
    conv.add_argument("-p", dest="pid", type=decimal_int, required=True)
    orphans = resource_action("release_orphans", "release the orphans of a lockspace, or of "
                                                 "one resource (root; leasestore's own verb)")
    orphans.add_argument("-s", dest="lockspace", metavar="LOCKSPACE[:...]")
    orphans.add_argument("-r", dest="resources", action="append",
                         metavar="LS:RES:PATH:OFFSET")
    req = resource_action("request", "ask the holder of a lease to give it up")
    req.add_argument("-r", dest="resources", action="append", required=True,
                     metavar="LS:RES:PATH:OFFSET[:LVER]")
    req.add_argument("-f", dest="force_mode", type=decimal_int, choices=(0, 1, 2), default=2,
                     help="1: kill the holder, 2: its killpath or SIGTERM, 0 with lver 0: clear")
    inq = resource_action("inquire", "the leases a registered pid holds")
    inq.add_argument("-p", dest="pid", type=decimal_int, required=True)
    cmd = resource_action("command", "register, acquire the leases, then exec a command "
                                     "that holds them for its lifetime")
    cmd.add_argument("-r", dest="resources", action="append", required=True,
                     metavar="LS:RES:PATH:OFFSET[:LVER|:SH]")
    cmd.add_argument("-O", dest="orphan", type=decimal_int, choices=(0, 1), default=0,
                     help="adopt orphans of the leases")
    cmd.add_argument("-P", dest="persistent", type=decimal_int, choices=(0, 1), default=0,
                     help="keep the leases as orphans when the command exits")
    cmd.add_argument("-c", dest="argv", nargs=argparse.REMAINDER, required=True,
                     metavar="PATH ARGS")


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print(text)


def _host_lines(hosts: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"h {h['host_id']} gen {h['generation']} timestamp {h['timestamp']} "
        f"{h['state'].upper()} {h['host_name']}"
        + (f" renewed {h['renewed_ago_s']:.1f} s ago" if "renewed_ago_s" in h else "")
        + (f" ERROR {h['error']}" if 'error' in h else "")
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
        os.environ[client.RUN_DIR_ENV] = args.run_dir
    name = args.action
    if name == "status":
        data = client.status()
        lines = [f"daemon {data['host_name']} pid {data['pid']} watchdog {data['watchdog']}"]
        lines += [f"s {ls['lockspace']}:{ls['host_id']}:{ls['path']}:{ls['offset']} "
                  f"{ls['state']} gen {ls['generation']}" for ls in data["lockspaces"]]
        lines += [f"r {lease['state']} p {lease['pid']}" + (" ORPHAN" if lease["orphan"] else "")
                  for lease in data["leases"]]
        _print(args, data, "\n".join(lines))
        return 0
    if name == "log_dump":
        text = client.log_dump()
        _print(args, {"log": text}, text.rstrip("\n"))
        return 0
    if name == "set_event":
        lockspace = args.lockspace.split(":", 1)[0]
        client.set_event(lockspace, args.host_id, args.generation, args.event, args.data,
                         flags=client.SETEV_CUR_GENERATION if args.generation == 0 else 0)
        _print(args, {"ok": True}, f"set_event {lockspace} host {args.host_id} done")
        return 0
    if name == "set_config":
        if (args.used is None) == (args.used_by_orphans is None):
            raise UsageError("set_config takes one of -u 0|1, -O 0|1")
        lockspace = args.lockspace.split(":", 1)[0]
        client.set_config(lockspace, used=None if args.used is None else bool(args.used),
                          used_by_orphans=(None if args.used_by_orphans is None
                                           else bool(args.used_by_orphans)))
        _print(args, {"ok": True}, f"set_config {lockspace} done")
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
        with while_waiting(f"joining {spec.name} as host_id {spec.host_id}",
                           quiet=args.asynchronous or args.json):
            client.add_lockspace(*common, iotimeout=args.io_timeout,
                                 wait=not args.asynchronous)
        _print(args, {"ok": True}, f"joined {spec.name} as host_id {spec.host_id}"
               if not args.asynchronous else f"adding {spec.name}")
    elif name == "rem_lockspace":
        with while_waiting(f"leaving {spec.name}", quiet=args.asynchronous or args.json):
            client.rem_lockspace(*common, wait=not args.asynchronous)
        _print(args, {"ok": True}, f"left {spec.name}")
    else:
        joined = client.inq_lockspace(*common, wait=args.wait)
        _print(args, {"joined": joined}, {True: "joined", False: "not joined",
                                          None: "in progress"}[joined])
        return 0 if joined else 1
    return 0


def _resources(texts: list[str]) -> list[ResourceSpec]:
    return [ResourceSpec.parse(text) for text in texts]


def _acquire_each(specs: list[ResourceSpec], slkfd: int | None, pid: int | None,
                  args: argparse.Namespace) -> list[dict[str, Any]]:
    return [
        client.acquire(spec.lockspace, spec.name, list(spec.disks), slkfd=slkfd, pid=pid,
                       shared=getattr(args, "shared", False) or spec.shared, version=spec.lver,
                       persistent=bool(args.persistent), orphan=bool(args.orphan))
        for spec in specs
    ]


def run_resource(args: argparse.Namespace) -> int:
    if args.run_dir:
        os.environ[client.RUN_DIR_ENV] = args.run_dir
    if args.action == "inquire":
        held = client.inquire(pid=args.pid)
        _print(args, [{**h, "lockspace": h["lockspace"].decode(),
                       "resource": h["resource"].decode()} for h in held],
               "\n".join(h["state"] for h in held))
        return 0
    if args.action == "release_orphans":
        return _release_orphans(args)
    specs = _resources(args.resources)
    if args.action == "request":
        owners = [client.request(spec.lockspace, spec.name, list(spec.disks), args.force_mode,
                                 spec.lver) for spec in specs]
        _print(args, owners, "\n".join(f"{spec.name}: owner host {owner}"
                                       for spec, owner in zip(specs, owners, strict=True)))
        return 0
    if args.action == "acquire":
        held = _acquire_each(specs, None, args.pid, args)
        _print(args, held, "\n".join(h["state"] for h in held))
    elif args.action == "convert":
        held = [client.convert(spec.lockspace, spec.name, list(spec.disks), shared=spec.shared,
                               pid=args.pid) for spec in specs]
        _print(args, held, "\n".join(h["state"] for h in held))
    elif args.action == "release":
        for spec in specs:
            client.release(spec.lockspace, spec.name, list(spec.disks), pid=args.pid)
        _print(args, {"ok": True}, "released")
    else:
        return _command(args, specs)
    return 0


def _release_orphans(args: argparse.Namespace) -> int:
    if (args.lockspace is None) == (args.resources is None):
        raise UsageError("release_orphans takes -s LOCKSPACE or -r RESOURCE (one or more)")
    fd = client.register()
    if args.lockspace is not None:
        targets = [(args.lockspace.split(":", 1)[0], "")]
    else:
        targets = [(spec.lockspace, spec.name) for spec in _resources(args.resources)]
    released = sum(client.release_orphans(lockspace, name, slkfd=fd)
                   for lockspace, name in targets)
    _print(args, {"released": released}, f"released {released} orphan(s)")
    return 0


def _command(args: argparse.Namespace, specs: list[ResourceSpec]) -> int:
    """Like sanlock's `client command`: the exec'd program inherits the registration."""
    if not args.argv:
        raise UsageError("command needs -c PATH [ARGS...]")
    if shutil.which(args.argv[0]) is None:
        raise UsageError(f"program {args.argv[0]!r} is not found or not executable; nothing "
                         "was acquired")
    fd = client.register()
    _acquire_each(specs, fd, None, args)
    os.set_inheritable(fd, True)
    sys.stdout.flush()
    os.execvp(args.argv[0], args.argv)
