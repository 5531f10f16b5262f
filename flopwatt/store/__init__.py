"""What every store engine and every reader of a store share: the schema and its migrations
(:mod:`.schema`) and the telemetry chunk format (:mod:`.chunks`). The SQLite engine itself lives
in :mod:`flopwatt.collector.store`."""
