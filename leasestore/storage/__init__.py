"""Real storage: O_DIRECT devices with bounded I/O, and the driver that runs effects on them."""
