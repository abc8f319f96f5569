"""Layer `core`: the math and device helpers that every agent uses.

Networks (`nets`, `convnets`), distributions, the Gaussian ensemble and the ensemble dynamics
model built on it (`ensemble`, `dynamics`), sampling planners (`planners`), λ-returns and return
normalisation (`returns`), update helpers (`updates`: sequence-length check, non-finite skip,
EMA targets), named random streams (`rngs`) and the device axis (`parallel`).

Imports: only the bottom layer (`config`, `schema`, `presets`, `yamlio`, `xla_flags`,
`logging`); nothing of `envs`, `replay`, `agents`, `run`, `bench` or the command line.
"""
