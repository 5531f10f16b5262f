"""The fault suite's support package: it drives the real collector through its CLI, simulated
agents in "farm" subprocesses and raw gRPC clients, injects faults (process kills, a TCP proxy
that resets or black-holes connections, slow fsync, a full disk, a held SQLite write lock, a full
agent spool) and checks the delivery ledger afterwards.

One module per job:

* :mod:`.processes` — start, signal, kill and clean up collector / farm / load processes;
* :mod:`.farm` — the agent-farm driver (a script run in its own process);
* :mod:`.rawload` — lightweight raw gRPC agents (a script run in its own process);
* :mod:`.proxy` — the loopback TCP proxy (pass / reset / blackhole);
* :mod:`.shim` and ``slow_fsync.c`` — the LD_PRELOAD fsync slowdown;
* :mod:`.disk` — a small tmpfs for the database, filled and freed;
* :mod:`.lock` — a process holding the database write lock;
* :mod:`.monitor` — /healthz, WAL size and agent status sampled over time;
* :mod:`.recovery` — recovery time and backlog drain rate from that timeline;
* :mod:`.ledger` — what was produced vs what the store holds;
* :mod:`.report` — results, verdicts, tables and JSON lines;
* :mod:`.harness` — one case's workspace and the steps every case shares;
* :mod:`.cases` — the fault cases themselves.
"""
