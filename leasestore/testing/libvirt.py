"""Real libvirtd + QEMU "hosts" on one machine, each taking VM leases through libvirt's own
sanlock lock-driver plugin from whatever daemon its SANLOCK_RUN_DIR names (leasestore's or
sanlock's). Facts and recipe: LIBVIRT-E2E.md.

Each host is an unmodified `libvirtd` in a private mount namespace, with per-host directories
bind-mounted over /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt,
/var/cache/libvirt, and copies of /etc/passwd and /etc/group that add the `libvirt-qemu` user
Debian's libvirtd resolves before reading qemu.conf. Nothing outside the host directory is
written, except mount points created (empty) where missing and removed again. Guests are TCG,
64 MiB, with one raw 1 MiB disk and no OS: SeaBIOS idles, the lease path is the one a real VM
takes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from leasestore.testing.procs import poll

BIND_POINTS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
               "log": "/var/log/libvirt", "cache": "/var/cache/libvirt"}
HELPER = "/usr/lib/libvirt/libvirt_sanlock_helper"

QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
lock_manager = "sanlock"
"""
LIBVIRTD_CONF = """auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:stderr"
"""


def missing() -> str | None:
    """What this machine lacks for real libvirt hosts (None when nothing)."""
    if os.geteuid() != 0:
        return "needs root"
    for program in ("libvirtd", "virsh", "qemu-system-x86_64", "unshare"):
        if shutil.which(program) is None:
            return f"needs {program} (apt-get install libvirt-daemon libvirt-daemon-driver-qemu "\
                   "libvirt-clients libvirt-sanlock qemu-system-x86)"
    if not os.path.exists(HELPER):
        return "needs libvirt-sanlock (the plugin and libvirt_sanlock_helper)"
    return None


def domain_xml(name: str, disk: str, lease: tuple[str, str, str, int] | None,
               on_lockfailure: str | None = None) -> str:
    """A TCG guest with one raw disk; `lease` = (lockspace, key, path, offset)."""
    lease_xml = "" if lease is None else (
        f"<lease><lockspace>{lease[0]}</lockspace><key>{lease[1]}</key>"
        f"<target path='{lease[2]}' offset='{lease[3]}'/></lease>")
    failure = f"<on_lockfailure>{on_lockfailure}</on_lockfailure>" if on_lockfailure else ""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  {failure}
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='hda' bus='ide'/>
    </disk>
    {lease_xml}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


class LibvirtHost:
    """One libvirtd in its own mount namespace, talking to the lease daemon of `sanlock_run_dir`."""

    def __init__(self, base: Path, name: str, sanlock_run_dir: str,
                 sanlock_conf: str = "auto_disk_leases = 0\nrequire_lease_for_disks = 1\n"
                                     "user = \"root\"\ngroup = \"root\"\n") -> None:
        self.name = name
        self.dir = base / name
        for sub in BIND_POINTS:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        etc = self.dir / "etc"
        (etc / "qemu.conf").write_text(QEMU_CONF)
        (etc / "qemu-sanlock.conf").write_text(sanlock_conf)
        (etc / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        for table, line in (("passwd", "libvirt-qemu:x:64055:64055::/nonexistent:/bin/false"),
                            ("group", "libvirt-qemu:x:64055:")):
            text = Path(f"/etc/{table}").read_text()
            if "\nlibvirt-qemu:" not in "\n" + text:
                text = text.rstrip("\n") + "\n" + line + "\n"
            (self.dir / table).write_text(text)
        self.log_path = self.dir / "libvirtd.log"
        self.sanlock_run_dir = sanlock_run_dir
        self.uri = f"qemu:///system?socket={self.dir / 'run' / 'libvirt-sock'}"
        self._created: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120, companion: str | None = None) -> None:
        """Start libvirtd; `companion`, a shell command, first starts in the background in the
        same namespace (a lease daemon whose killpaths must reach this libvirtd)."""
        for point in [*BIND_POINTS.values()]:
            if not os.path.exists(point):
                os.makedirs(point)
                self._created.append(point)
        mounts = [f"mount --bind {self.dir / sub} {point}" for sub, point in BIND_POINTS.items()]
        mounts += [f"mount --bind {self.dir / 'passwd'} /etc/passwd",
                   f"mount --bind {self.dir / 'group'} /etc/group"]
        background = [f"{{ {companion} & }}"] if companion else []
        script = " && ".join([*mounts, *background,
                              "exec libvirtd --pid-file /run/libvirt/libvirtd.pid"])
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["setsid", "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                env={**os.environ, "SANLOCK_RUN_DIR": self.sanlock_run_dir},
                stdout=log, stderr=subprocess.STDOUT)
        poll(lambda: self.virsh("version", check=False).returncode == 0
             or self.proc is None or self.proc.poll() is not None, timeout_s,
             interval_s=0.3, what=f"libvirtd {self.name}")
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]

    def virsh(self, *args: str, check: bool = True,
              timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True,
                             timeout=timeout_s, check=False)
        if check:
            assert out.returncode == 0, f"virsh {' '.join(args)}: {out.stdout}{out.stderr}"
        return out

    def define(self, xml: str) -> None:
        path = self.dir / "domain.xml"
        path.write_text(xml)
        self.virsh("define", str(path))

    def qemu_pid(self, domain: str) -> int:
        return int((self.dir / "run" / "qemu" / f"{domain}.pid").read_text().strip())

    def state(self, domain: str) -> str:
        return self.virsh("domstate", domain).stdout.strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                listed = self.virsh("list", "--name", check=False, timeout_s=20).stdout.split()
                for domain in listed:
                    self.virsh("destroy", domain, check=False, timeout_s=20)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pidfile in (self.dir / "run" / "qemu").glob("*.pid"):  # no guest outlives its host
            with contextlib.suppress(ValueError, ProcessLookupError, OSError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        deadline = time.monotonic() + 5
        for point in reversed(self._created):
            while time.monotonic() < deadline:
                try:
                    os.rmdir(point)
                    break
                except OSError:
                    time.sleep(0.1)
        self._created.clear()


def auto_disk_leases_conf(lease_dir: str, host_id: int, io_timeout_s: int = 1) -> str:
    """qemu-sanlock.conf for auto_disk_leases: libvirtd formats and joins __LIBVIRT__DISKS__ in
    `lease_dir` at start-up, and a lease per disk (named by the md5 of its path) as needed."""
    return (f'auto_disk_leases = 1\ndisk_lease_dir = "{lease_dir}"\nhost_id = {host_id}\n'
            f'io_timeout = {io_timeout_s}\nuser = "root"\ngroup = "root"\n')


@contextlib.contextmanager
def libvirt_hosts(base: Path, run_dirs: dict[str, str],
                  sanlock_confs: dict[str, str] | None = None
                  ) -> Iterator[dict[str, LibvirtHost]]:
    """A libvirtd per named host, started (the first probes QEMU's capabilities, the others
    reuse its cache), all stopped at the end. `sanlock_confs`: each host's qemu-sanlock.conf
    (default: explicit leases only)."""
    hosts: dict[str, LibvirtHost] = {}
    try:
        for name, run_dir in run_dirs.items():
            host = (LibvirtHost(base, name, run_dir) if sanlock_confs is None
                    else LibvirtHost(base, name, run_dir, sanlock_confs[name]))
            if hosts:
                first = next(iter(hosts.values()))
                shutil.copytree(first.dir / "cache", host.dir / "cache", dirs_exist_ok=True)
            hosts[name] = host
            host.start()
        yield hosts
    finally:
        for host in reversed(list(hosts.values())):
            host.stop()
