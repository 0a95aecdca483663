"""The reliability battery: every guarantee of the architecture's section 1, tested under faults
(killed workers, restarted servers, duplicate deliveries, clock jumps, concurrent clients, bad
input, hostile actions, long steady load) on real PostgreSQL, Redis and worker processes.

The size is chosen by ``LEDGERFLOW_CHAOS`` (``short``, the default and part of ``pytest tests``;
``medium``; ``long``, run by ``nox -s chaos``); see :mod:`chaos.battery`.
"""
