"""Layer `replay`: where experience lives between acting and training.

`store` keeps steps in memory as worker streams of chunks, `sampler` draws sequences and writes
per-step values back, `files` saves and loads chunk files, and `buffer.Replay` joins them (its
public names are re-exported here: `from dreamer.replay import Replay`).

Imports: `dreamer.core` and the bottom layer (`config`, `schema`, `presets`, `yamlio`,
`xla_flags`, `logging`); never `agents`, `run`, `bench` or the command line.
"""
from dreamer.replay.buffer import Replay, stored_stamps

__all__ = ["Replay", "stored_stamps"]
