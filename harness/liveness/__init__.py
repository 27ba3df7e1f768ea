"""Who is alive: process identity, per-process locks, heartbeat files.

Written by the pool (coordinator and workers), read by the views; so it sits
below both and imports neither.
"""
