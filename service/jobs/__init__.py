"""Async jobs: a backend interface with an in-process and a Redis (arq) implementation."""
