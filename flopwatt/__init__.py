"""flopwatt: how much of its spec-sheet compute each GPU in a fleet really delivers, at what power.

Subpackages: ``analysis`` (pure physics, registry, efficiency and report maths), ``agent``
(devices, sampler, jobs, uplink), ``collector`` (gRPC ingest, store, metrics, HTTP) and ``v1``
(generated wire code). ``cli`` is the single ``flopwatt`` command.
"""

__version__ = "0.1.0"
