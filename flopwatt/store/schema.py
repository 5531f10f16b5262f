"""The store's schema: versioned migrations, and how values outside SQL's types are stored.
Shared by the store engine and by readers that open a database directly (the report)."""

from __future__ import annotations


class PostgresOnly(str):
    """A migration statement for PostgreSQL only (SQLite skips it; the version still counts)."""

    __slots__ = ()


def _legacy_partition(parent: str, column: str, source: str, where: str = "TRUE") -> str:
    """PL/pgSQL: the rows of ``source`` (``where``) into one partition of ``parent`` that
    reaches from the minimum to the next whole minute after the newest ``column`` (nothing
    when there are none)."""
    return PostgresOnly(
        f"""DO $$
DECLARE hi BIGINT;
BEGIN
    SELECT MAX({column}) INTO hi FROM {source} WHERE {where};
    IF hi IS NOT NULL THEN
        hi := (hi / 60000000000 + 1) * 60000000000;
        EXECUTE format('CREATE TABLE %I PARTITION OF {parent} FOR VALUES FROM (MINVALUE) '
                       'TO (%s)', '{parent}_legacy', hi);
        INSERT INTO {parent} SELECT * FROM {source} WHERE {where};
    END IF;
END $$"""
    )


_ROLLUP_COLUMNS = """tier TEXT NOT NULL,
                device_uuid TEXT NOT NULL,
                window_start_unix_ns INTEGER NOT NULL,
                t_first_unix_ns INTEGER NOT NULL,
                t_last_unix_ns INTEGER NOT NULL,
                n_samples INTEGER NOT NULL,
                data BLOB NOT NULL,
                PRIMARY KEY (tier, device_uuid, window_start_unix_ns)"""


#: Schema migrations: (version, statements). Never edit a released entry; append a new one.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE agents (
                agent_id TEXT PRIMARY KEY,
                hostname TEXT NOT NULL,
                agent_version TEXT NOT NULL,
                device_backend TEXT NOT NULL,
                node_json TEXT NOT NULL,
                epoch INTEGER NOT NULL,
                registered_unix_ns INTEGER NOT NULL
            )""",
            """CREATE TABLE devices (
                device_uuid TEXT PRIMARY KEY,
                agent_id TEXT NOT NULL,
                device_index INTEGER NOT NULL,
                name TEXT NOT NULL,
                kind TEXT NOT NULL,
                pci_bus_id TEXT NOT NULL,
                pci_device_id INTEGER,
                sku TEXT,
                sku_match TEXT NOT NULL,
                simulated INTEGER NOT NULL,
                power_limit_enforced_w REAL,
                info_json TEXT NOT NULL,
                registered_unix_ns INTEGER NOT NULL
            )""",
            """CREATE TABLE messages (
                agent_id TEXT NOT NULL,
                epoch INTEGER NOT NULL,
                sequence INTEGER NOT NULL,
                kind TEXT NOT NULL,
                digest BLOB NOT NULL,
                received_unix_ns INTEGER NOT NULL,
                status TEXT NOT NULL,
                detail TEXT NOT NULL,
                samples INTEGER NOT NULL,
                PRIMARY KEY (agent_id, epoch, sequence)
            )""",
            """CREATE TABLE stream_progress (
                agent_id TEXT NOT NULL,
                epoch INTEGER NOT NULL,
                committed_through INTEGER NOT NULL,
                PRIMARY KEY (agent_id, epoch)
            )""",
            """CREATE TABLE telemetry_chunks (
                agent_id TEXT NOT NULL,
                epoch INTEGER NOT NULL,
                sequence INTEGER NOT NULL,
                chunk_index INTEGER NOT NULL,
                device_uuid TEXT NOT NULL,
                t_first_unix_ns INTEGER NOT NULL,
                t_last_unix_ns INTEGER NOT NULL,
                n_samples INTEGER NOT NULL,
                data BLOB NOT NULL,
                PRIMARY KEY (agent_id, epoch, sequence, chunk_index)
            )""",
            "CREATE INDEX telemetry_by_device ON telemetry_chunks (device_uuid, t_first_unix_ns)",
            """CREATE TABLE rejected_samples (
                agent_id TEXT NOT NULL,
                epoch INTEGER NOT NULL,
                sequence INTEGER NOT NULL,
                device_uuid TEXT NOT NULL,
                reason TEXT NOT NULL,
                samples INTEGER NOT NULL,
                PRIMARY KEY (agent_id, epoch, sequence, device_uuid, reason)
            )""",
            """CREATE TABLE job_results (
                agent_id TEXT NOT NULL,
                epoch INTEGER NOT NULL,
                sequence INTEGER NOT NULL,
                job_id TEXT NOT NULL,
                device_uuid TEXT NOT NULL,
                kind TEXT NOT NULL,
                precision TEXT NOT NULL,
                model TEXT,
                batch INTEGER,
                started_unix_ns INTEGER NOT NULL,
                finished_unix_ns INTEGER NOT NULL,
                simulated INTEGER NOT NULL,
                burst_flops_per_s REAL,
                sustained_flops_per_s REAL,
                energy_per_flop_j REAL,
                mean_power_w REAL,
                delivered_flops_per_s REAL,
                latency_p50_s REAL,
                efficiency_ratio REAL,
                spec_efficiency_ratio REAL,
                throttle_reasons_seen INTEGER NOT NULL,
                power_limit_w REAL,
                sm_clock_mean_mhz REAL,
                temperature_max_c REAL,
                result_json TEXT NOT NULL,
                PRIMARY KEY (agent_id, epoch, sequence)
            )""",
            "CREATE INDEX job_results_by_device ON job_results (device_uuid, finished_unix_ns)",
            """CREATE TABLE comparisons (
                agent_id TEXT NOT NULL,
                epoch INTEGER NOT NULL,
                sequence INTEGER NOT NULL,
                sku TEXT,
                precision TEXT NOT NULL,
                datapath TEXT,
                spec_peak_flops_per_s REAL,
                spec_tdp_w REAL,
                burst_over_spec_ratio REAL,
                sustained_over_spec_ratio REAL,
                mean_power_over_tdp_ratio REAL,
                mean_power_over_limit_ratio REAL,
                measured_energy_per_flop_j REAL,
                physics_energy_per_flop_j REAL,
                ceiling_energy_per_flop_j REAL,
                measured_over_physics_ratio REAL,
                measured_over_ceiling_ratio REAL,
                physics_tdp_w REAL,
                physics_power_at_measured_w REAL,
                PRIMARY KEY (agent_id, epoch, sequence)
            )""",
            """CREATE TABLE jobs (
                job_id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                spec_json TEXT NOT NULL,
                selector_json TEXT NOT NULL,
                requested_unix_ns INTEGER NOT NULL
            )""",
            """CREATE TABLE job_targets (
                job_id TEXT NOT NULL,
                agent_id TEXT NOT NULL,
                state INTEGER NOT NULL,
                message TEXT NOT NULL,
                updated_unix_ns INTEGER NOT NULL,
                delivered_epoch INTEGER NOT NULL,
                PRIMARY KEY (job_id, agent_id)
            )""",
        ),
    ),
    (
        2,
        (
            # Each commit holds chunks of many devices, so an index keyed by device took a random
            # insert per chunk: thousands of pages written per commit at fleet scale. The report's
            # newest-chunk lookup walks the primary key (agent, epoch, sequence) instead.
            "DROP INDEX IF EXISTS telemetry_by_device",
        ),
    ),
    (
        3,
        (
            # Resends are not stored; what they were is counted per stream, so that
            # `flopwatt store check` can give each epoch's ledger from the store alone.
            "ALTER TABLE stream_progress ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE stream_progress ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0",
        ),
    ),
    (
        4,
        (
            # The stream that holds (agent, epoch) now: a replica records its stream's token at
            # the hello, and a commit from any older stream of the same epoch is refused
            # (fencing a half-open stream on another collector replica).
            "ALTER TABLE stream_progress ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        ),
    ),
    (
        5,
        (
            # Retention (flopwatt.store.maintenance): settled per-message chunks are re-packed
            # per device into compact chunks (flopwatt.store.packing) and rolled up into 10 s
            # and 1 min buckets (flopwatt.store.rollup); each tier is pruned at its horizon.
            """CREATE TABLE telemetry_packed (
                device_uuid TEXT NOT NULL,
                t_first_unix_ns INTEGER NOT NULL,
                t_last_unix_ns INTEGER NOT NULL,
                n_samples INTEGER NOT NULL,
                data BLOB NOT NULL
            )""",
            "CREATE INDEX telemetry_packed_by_device ON telemetry_packed "
            "(device_uuid, t_first_unix_ns)",
            "CREATE INDEX telemetry_packed_by_time ON telemetry_packed (t_last_unix_ns)",
            """CREATE TABLE telemetry_rollups (
                tier TEXT NOT NULL,
                device_uuid TEXT NOT NULL,
                window_start_unix_ns INTEGER NOT NULL,
                t_first_unix_ns INTEGER NOT NULL,
                t_last_unix_ns INTEGER NOT NULL,
                n_samples INTEGER NOT NULL,
                data BLOB NOT NULL,
                PRIMARY KEY (tier, device_uuid, window_start_unix_ns)
            )""",
            "CREATE INDEX telemetry_rollups_by_time ON telemetry_rollups "
            "(tier, window_start_unix_ns)",
            # Each device's last compacted sample: the next pass's first interval and energy
            # delta are measured from it.
            """CREATE TABLE telemetry_tails (
                device_uuid TEXT PRIMARY KEY,
                t_unix_ns INTEGER NOT NULL,
                energy_j REAL
            )""",
            # Pruning messages by age walks this index (appended at its end: received times
            # grow), never the whole table.
            "CREATE INDEX messages_by_received ON messages (received_unix_ns)",
            # Pruned telemetry messages, so that the ledger (`store check`) tells them from
            # gaps: how many, and the highest pruned sequence.
            "ALTER TABLE stream_progress ADD COLUMN pruned INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE stream_progress ADD COLUMN pruned_through INTEGER NOT NULL DEFAULT 0",
            # Rejected-sample counts are kept for the results horizon: they need a time.
            "ALTER TABLE rejected_samples ADD COLUMN received_unix_ns INTEGER NOT NULL DEFAULT 0",
            """CREATE TABLE retention_totals (
                name TEXT PRIMARY KEY,
                value INTEGER NOT NULL
            )""",
        ),
    ),
    (
        6,
        (
            # PostgreSQL: the raw and rollup tiers in time partitions, dropped whole once past
            # their horizon (flopwatt.store.partitions): a DELETE would leave the space to
            # VACUUM and never give it back to the disk. Compact chunks by the time of their
            # newest sample; rollups by tier, then by window start. Existing rows move into one
            # "legacy" partition per table. SQLite keeps batched deletes.
            PostgresOnly("ALTER TABLE telemetry_packed RENAME TO telemetry_packed_v5"),
            PostgresOnly("DROP INDEX telemetry_packed_by_device"),
            PostgresOnly("DROP INDEX telemetry_packed_by_time"),
            PostgresOnly(
                """CREATE TABLE telemetry_packed (
                device_uuid TEXT NOT NULL,
                t_first_unix_ns INTEGER NOT NULL,
                t_last_unix_ns INTEGER NOT NULL,
                n_samples INTEGER NOT NULL,
                data BLOB NOT NULL
            ) PARTITION BY RANGE (t_last_unix_ns)"""
            ),
            PostgresOnly(
                "CREATE INDEX telemetry_packed_by_device ON telemetry_packed "
                "(device_uuid, t_first_unix_ns)"
            ),
            PostgresOnly(
                "CREATE INDEX telemetry_packed_by_time ON telemetry_packed (t_last_unix_ns)"
            ),
            _legacy_partition("telemetry_packed", "t_last_unix_ns", "telemetry_packed_v5"),
            PostgresOnly("DROP TABLE telemetry_packed_v5"),
            PostgresOnly("ALTER TABLE telemetry_rollups RENAME TO telemetry_rollups_v5"),
            PostgresOnly("DROP INDEX telemetry_rollups_by_time"),
            PostgresOnly("ALTER TABLE telemetry_rollups_v5 DROP CONSTRAINT telemetry_rollups_pkey"),
            PostgresOnly(
                f"CREATE TABLE telemetry_rollups ({_ROLLUP_COLUMNS}) PARTITION BY LIST (tier)"
            ),
            PostgresOnly(
                "CREATE INDEX telemetry_rollups_by_time ON telemetry_rollups "
                "(tier, window_start_unix_ns)"
            ),
            *(
                PostgresOnly(
                    f"CREATE TABLE telemetry_rollups_{tier} PARTITION OF telemetry_rollups "
                    f"FOR VALUES IN ('{tier}') PARTITION BY RANGE (window_start_unix_ns)"
                )
                for tier in ("10s", "1m")
            ),
            *(
                _legacy_partition(
                    f"telemetry_rollups_{tier}",
                    "window_start_unix_ns",
                    "telemetry_rollups_v5",
                    f"tier = '{tier}'",
                )
                for tier in ("10s", "1m")
            ),
            PostgresOnly("DROP TABLE telemetry_rollups_v5"),
        ),
    ),
    (
        7,
        (
            # Attribution (flopwatt.store.attribution): while one workload (pod, processes)
            # held a GPU. One row per run of unchanged owners, extended in place: a handful of
            # rows per GPU per day, pruned with the results.
            """CREATE TABLE gpu_attribution (
                device_uuid TEXT NOT NULL,
                start_unix_ns INTEGER NOT NULL,
                end_unix_ns INTEGER NOT NULL,
                agent_id TEXT NOT NULL,
                namespace TEXT NOT NULL,
                pod TEXT NOT NULL,
                container TEXT NOT NULL,
                job TEXT NOT NULL,
                processes_known INTEGER NOT NULL,
                owner_key TEXT NOT NULL,
                processes_json TEXT NOT NULL,
                PRIMARY KEY (device_uuid, start_unix_ns)
            )""",
            "CREATE INDEX gpu_attribution_by_end ON gpu_attribution (end_unix_ns)",
        ),
    ),
    # No DDL: telemetry chunks may now carry a 64-bit column bitmap (``FWT2``/``FWZ2``, for
    # the NVLink replay and recovery counters). An older flopwatt cannot read those, so the
    # version makes it refuse the store at start ("newer than this flopwatt") instead.
    (8, ()),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def epoch_to_db(epoch: int) -> int:
    """An unsigned 64-bit epoch as the signed 64-bit integer SQLite stores (two's complement).

    Epochs are random ``fixed64`` values; half of them do not fit SQLite's signed INTEGER.
    """
    return epoch - (1 << 64) if epoch >= 1 << 63 else epoch


def epoch_from_db(value: int) -> int:
    """Inverse of :func:`epoch_to_db`."""
    return value + (1 << 64) if value < 0 else value
