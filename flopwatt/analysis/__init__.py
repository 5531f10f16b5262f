"""Pure analysis: physics TDP model, the sourced GPU registry, efficiency maths and fleet reports.

Nothing here performs network I/O or imports ``agent``, ``collector`` or gRPC. The only file
reads are the packaged registry data, done by explicit loader functions; plotting libraries are
imported inside the plotting functions.
"""
