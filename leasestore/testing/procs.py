"""Real processes and devices for tests and tools: leasestore and sanlock daemons (each stopped
by its pid), loop devices (each detached), backing files."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from leasestore import client
from leasestore.daemon.commands import RUN_DIR_ENV
from leasestore.daemon.sanlock_proto import SOCKET_NAME

T = TypeVar("T")


def poll(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.1,
         what: str = "condition") -> T:
    """Return the first truthy value of predicate() within timeout_s, else fail."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@contextlib.contextmanager
def run_dir(path: str) -> Iterator[None]:
    """Point leasestore.client at a daemon's run dir for the duration."""
    old = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = old


def make_file(path: Path, size_b: int, allocate: bool = False) -> str:
    """A zero-filled file; sparse unless `allocate` (then every block is really written)."""
    with path.open("wb") as f:
        if allocate:
            chunk = bytes(1 << 20)
            for _ in range(size_b // len(chunk)):
                f.write(chunk)
            f.write(bytes(size_b % len(chunk)))
            os.fsync(f.fileno())
        else:
            f.truncate(size_b)
    return str(path)


DETACH_WAIT_S = 10.0


class LoopDevices:
    """Attaches loop devices over backing files and detaches every one at teardown."""

    def __init__(self) -> None:
        self.attached: list[str] = []

    def attach(self, backing: str, sector_size: int = 512) -> str:
        cmd = ["losetup", "-f", "--show", "--direct-io=on", f"--sector-size={sector_size}", backing]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            cmd.remove("--direct-io=on")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        device = out.stdout.strip()
        self.attached.append(device)
        return device

    def detach_all(self) -> None:
        """Detach each device, trying again for a while where it is still busy (a process
        that held it open may still be closing it); a device left attached is an error."""
        left = []
        for device in reversed(self.attached):
            subprocess.run(["blockdev", "--setrw", device], capture_output=True)
            deadline = time.monotonic() + DETACH_WAIT_S
            while subprocess.run(["losetup", "-d", device], capture_output=True).returncode:
                if time.monotonic() > deadline:
                    left.append(device)
                    break
                time.sleep(0.2)
        self.attached.clear()
        if left:
            raise RuntimeError(f"loop devices still attached: {', '.join(left)}")


def _accepts(socket_path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(socket_path)
        except OSError:
            return False
        return True


class DaemonProc:
    """A `leasestore daemon` in its own run dir."""

    def __init__(self, base: Path, name: str, io_timeout_s: int = 1,
                 watchdog_fire_timeout_s: float = 5, watchdog: str = "none",
                 run_dir_name: str | None = None, extra_args: Sequence[str] = ()) -> None:
        self.name = name
        self.run_dir = str(base / (run_dir_name or f"run-{name}"))
        self.log_path = base / f"{run_dir_name or name}.log"
        self._log = self.log_path.open("ab")  # a daemon restarted on this run dir logs on
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leasestore.cli.main", "daemon", "--run-dir", self.run_dir,
             "--host-name", name, "--io-timeout", str(io_timeout_s),
             "--watchdog", watchdog, "--watchdog-fire-timeout", str(watchdog_fire_timeout_s),
             *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        socket_path = os.path.join(self.run_dir, SOCKET_NAME)
        # Connectable, not merely present: a daemon killed on this run dir leaves its socket.
        poll(lambda: _accepts(socket_path) or self.proc.poll() is not None, 30,
             what=f"daemon {name} socket")
        assert self.proc.poll() is None, self.log()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with client.using(self.run_dir):
            return fn(*args, **kwargs)

    def hold(self, resource_spec: str, timeout_s: float = 30) -> subprocess.Popen[bytes]:
        """A `client command -r resource_spec -c sleep 600` process, returned once this
        daemon lists it as holding the lease (the caller kills it, by its pid)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "leasestore.cli.main", "client", "--run-dir", self.run_dir,
             "command", "-r", resource_spec, "-c", "sleep", "600"])
        try:
            poll(lambda: proc.poll() is not None or any(
                h["pid"] == proc.pid for h in self.call(client.status)["leases"]),
                timeout_s, what=f"{resource_spec} held")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        assert proc.poll() is None, f"the holder of {resource_spec} could not acquire"
        return proc

    def hosts(self, lockspace: str) -> dict[int, dict[str, Any]]:
        return {h["host_id"]: h for h in self.call(client.get_hosts, lockspace)}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class SanlockProc:
    """The real sanlock daemon, unprivileged and without a watchdog, in its own run dir."""

    def __init__(self, base: Path, name: str, sanlock_bin: str) -> None:
        self.bin = sanlock_bin
        self.run_dir = str(base / f"sanlock-{name}")
        os.makedirs(self.run_dir, exist_ok=True)
        self.env = {**os.environ, "SANLOCK_PRIVILEGED": "0", "SANLOCK_RUN_DIR": self.run_dir}
        self.log_path = base / f"sanlock-{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sanlock_bin, "daemon", "-D", "-w", "0", "-l", "0", "-e", name],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        poll(lambda: os.path.exists(os.path.join(self.run_dir, "sanlock.sock"))
             or self.proc.poll() is not None, 20, what="sanlock socket")
        assert self.proc.poll() is None, self.log_path.read_text()

    def client(self, *args: str, check: bool = True,
               timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([self.bin, "client", *args], env=self.env, capture_output=True,
                             text=True, timeout=timeout_s, check=False)
        if check:
            assert out.returncode == 0, out.stdout + out.stderr
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.client("shutdown", "-f", "1", check=False, timeout_s=15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
