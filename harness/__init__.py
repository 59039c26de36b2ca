"""Throw-away local services and project copies, for the tests and the benchmarks alike.

Not part of the package (``src/``) and not tests: ``tests/`` and ``bench/`` both start the same
PostgreSQL, MLflow server and S3 endpoint (:mod:`harness.services`), copy the project the same
way (:mod:`harness.project`) and meet the same team-server cases (:mod:`harness.team`), so the
benchmarks measure what the tests check without importing the test suite.
"""
