"""Layer `replay`: where experience lives between acting and training.

`store` keeps steps in memory as worker streams of chunks, `sampler` draws sequences and writes
per-step values back, `priority` keeps the priorities of prioritized draws, `files` saves and
loads chunk and priority files, and `buffer.Replay` joins them (the public names are re-exported
here: `from dreamer.replay import Replay`).

Imports: `dreamer.core` and the bottom layer (`config`, `schema`, `presets`, `yamlio`,
`xla_flags`, `logging`); never `agents`, `run`, `bench` or the command line.
"""
from dreamer.replay.buffer import Replay, stored_stamps
from dreamer.replay.priority import Prioritized, prioritized_options

__all__ = ["Prioritized", "Replay", "prioritized_options", "stored_stamps"]
