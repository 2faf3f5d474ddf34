"""Settings for every test: Hypothesis without its per-example deadline (a
wall-clock limit of 200 ms per example is a timed assertion, and fails on a
busy shared machine: seen on test_codec's BYTES round trip under load)."""

from hypothesis import settings

settings.register_profile("dlserve", deadline=None)
settings.load_profile("dlserve")
