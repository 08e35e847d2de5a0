"""The `leasestore` command line: format, dump, daemon, client, demo."""
