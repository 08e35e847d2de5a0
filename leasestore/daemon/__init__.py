"""The leasestore daemon: wire protocol, socket server, supervision and watchdog."""
