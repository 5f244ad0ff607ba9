"""Benchmarks of flux_sagemaker against the AWS SDK stack.

Run ``python -m benchmarks`` (or ``nox -s bench``); it rewrites docs/benchmarks.md.
"""
