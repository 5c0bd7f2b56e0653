"""Fault injection with an exact account (issue 8), on the real local services.

Every test drives a steady, counted stream of spans from the OpenTelemetry SDK (its OTLP/HTTP
exporter, with an API key) through the whole pipeline (gateway -> validate -> scrub -> dedup -> OTLP
sink) into a capturing OTLP backend the test runs, injects one fault, and ends with an account:
every span the gateway acknowledged is at the backend (``lost`` must be 0), copies beyond the first
are counted (``duplicates``), and spans of exports the exporter gave up on are ``refused``, never
counted as sent. Each test prints its table (pytest ``-s`` shows it): sent, acknowledged, refused,
delivered, duplicates, lost, refused-but-delivered-anyway, the largest consumer lag of each group,
and the largest resident memory of each process.

| module | faults |
| --- | --- |
| test_kills.py | SIGKILL of a validate, a scrub, a dedup worker, of a sink and of a gateway, mid-stream |
| test_outages.py | the shared Kafka broker stopped and restarted; Redis stopped, with each failure policy |
| test_backend.py | the backend unreachable; the backend answering slowly |
| test_overload.py | three times the measured capacity, sustained |

Each test is bounded in time and stops what it started. Sizes: ``RAMPART_CHAOS_SCALE`` stretches
every fault's duration (default 1, the CI size: outages of 10 s, backend down 20 s, overload 20 s;
about 6 minutes for the suite). The issue's full sizes (30 s, 60 s, 60 s) are scale 3:

    RAMPART_CHAOS_SCALE=3 make test
    RAMPART_CHAOS_SCALE=3 RAMPART_CHAOS_REPORT=benchmarks/results/chaos.md .venv/bin/pytest tests/chaos -s

``RAMPART_CHAOS_REPORT=<file>`` appends every table to that markdown file.
"""
