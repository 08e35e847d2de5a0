"""leasestore: cluster-wide leases over shared storage, on-disk compatible with sanlock 3.x.

Layers (see tests/test_layering.py for the enforced import rules):
L0 records and constants, L1 algorithms as effect generators, L2 real I/O, L3 services,
L4 daemon/client/plugins, L5 CLI, and `testing` for the simulator.
"""

__version__ = "0.1.0"
