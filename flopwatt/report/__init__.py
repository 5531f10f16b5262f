"""The fleet report: what the fleet delivers against spec and physics, and who the outliers are.

One package, one direction of imports (nothing here imports the collector or the agent):

* :mod:`.loading` — the report's inputs from a store (SQLite file, opened read-only);
* :mod:`.tables` — pure: the report's tables from those inputs (cohorts, robust z, verdicts);
* :mod:`.columns` — the tables as people see them (headers with units, cell formats);
* one module per output: :mod:`.html` (one self-contained page, figures from :mod:`.plots`),
  :mod:`.markdown`, :mod:`.json_doc`, :mod:`.files` (CSV/Parquet and :func:`~.files.write_report`,
  the one entry point for writing), :mod:`.terminal` (narrow tables) and :mod:`.summary` (the
  one-screen fleet summary of ``flopwatt demo`` and ``flopwatt report``).

Tables for people show TFLOP/s, pJ/FLOP and percentages; files keep SI units (FLOP/s, J per
FLOP, ratios) as the column names say. Absent values are empty cells (CSV), nulls (Parquet,
JSON) or "—", never 0.
"""
