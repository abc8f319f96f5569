"""Layer `run`: the loop around any agent.

`runner` trains (one process, or with actor processes), `session` holds what both loops share,
`learner` the train state on the learner devices, `actors` and `actor_pools` the processes that
step environments, `acting` the jitted policy and evaluation, `monitor` metrics, videos and
evaluation during training, `state` and `checkpoint` what a checkpoint holds, `clocks` when
periodic work is due, `multistep` several updates in one jitted call.

Imports: `agents`, `replay`, `envs`, `core` and the bottom layer; never `bench` or the command
line.
"""
