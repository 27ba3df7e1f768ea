"""Agent sessions: argv presets, prompts, running the process, reading its stream.

Kept empty of imports: ``sim.py`` runs as a program once per attempt.
"""
