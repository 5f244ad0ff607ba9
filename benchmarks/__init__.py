"""Benchmarks of flux_sagemaker against the AWS SDK stack: ``python -m benchmarks`` (see docs/benchmarks.md)."""
