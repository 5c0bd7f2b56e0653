"""The `forgery` stage: statistical screening of telemetry sent with valid credentials (docs/forgery.md).

Modules: sketches (bounded streaming sketches), baselines (per-source state), cardinality, replay,
scoring (statistics into evidence), processor (the Processor and its entry point).
"""

from processors.forgery.processor import (
    DROP_REASON,
    INTEGRITY_REASONS,
    INTEGRITY_SCORE,
    ForgeryProcessor,
    Verdict,
    build,
)

__all__ = ["DROP_REASON", "INTEGRITY_REASONS", "INTEGRITY_SCORE", "ForgeryProcessor", "Verdict", "build"]
