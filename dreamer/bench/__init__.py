"""Layer `bench`: measuring and studying runs, outside the training loop.

`benchmark` (update, policy and loop timings), `kernels` (launched work counted in compiled HLO),
`compare` (the official DreamerV3 update timed beside ours), `profiling`, `analysis` (a
checkpoint's world model and behaviour examined), `plotting` and `reference` (published curves),
`tabular` (many seeds of a tabular agent at once) and `transitions` (one-step models of vector
environments).

Imports: `run`, `agents`, `replay`, `envs`, `core` and the bottom layer; never the command line.
"""
