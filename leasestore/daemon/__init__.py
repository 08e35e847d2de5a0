"""The leasestore daemon: commands, sanlock-protocol front end, server, supervision, watchdog."""
