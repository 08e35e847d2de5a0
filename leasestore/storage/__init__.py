"""Real storage: O_DIRECT devices with bounded I/O (odirect), and the DeviceRunner that runs effects
on them (runner)."""
