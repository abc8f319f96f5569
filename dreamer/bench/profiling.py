"""Where the train step's time goes: one trace of the compiled step, each XLA operation's time
attributed to the function of ours that produced it.

While the step is traced, the functions in `SCOPED` run inside a `jax.named_scope` of their
name (the code itself is unchanged), so every HLO instruction's `op_name` carries the path of
those functions
(`behavior.actor_critic_loss/behavior.rollout/rssm.imagine`). The profiler's events name the
instructions they ran; instructions inside gradients (`transpose(...)`) count as backward.
Container instructions (while, conditional, call) are skipped, since their bodies' own
instructions are counted.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import gzip
import importlib
import json
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax

SCOPED = (
    ("dreamer.agents.dreamerv3.world_model", ("loss", "encode", "kl_losses")),
    ("dreamer.agents.dreamerv3.rssm", ("observe", "imagine")),
    ("dreamer.agents.dreamerv3.behavior", ("actor_critic_loss", "rollout", "critic_loss",
                                           "policy_dist", "value_dist", "lambda_return",
                                           "repval_loss")),
)
PREFIX = "scope:"
CONTAINERS = ("while", "conditional", "call")


@contextlib.contextmanager
def named_scopes(scoped=SCOPED) -> Iterator[None]:
    """Wraps each listed module function in a named scope of its name while inside; the
    modules call these through their module attribute, so tracing sees the wrappers.

    The scopes live only in the programs' metadata, which a persistent compilation cache leaves
    out of its key by default: while inside, the key includes it, so that a program compiled
    earlier without the scopes is not loaded in place of the scoped one."""
    saved = []
    metadata_in_key = jax.config.jax_compilation_cache_include_metadata_in_key
    jax.config.update("jax_compilation_cache_include_metadata_in_key", True)
    try:
        for module_name, names in scoped:
            module = importlib.import_module(module_name)
            for name in names:
                fn = getattr(module, name)
                saved.append((module, name, fn))
                scope = f"{PREFIX}{module_name.rsplit('.', 1)[-1]}.{name}"
                setattr(module, name, _scoped(fn, scope))
        yield
    finally:
        for module, name, fn in reversed(saved):
            setattr(module, name, fn)
        jax.config.update("jax_compilation_cache_include_metadata_in_key", metadata_in_key)


def _scoped(fn, tag: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.named_scope(tag):
            return fn(*args, **kwargs)
    return wrapper


INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Optimised HLO text -> {instruction name: (opcode, op_name)}."""
    out = {}
    for line in hlo_text.splitlines():
        m = INSTRUCTION.match(line)
        if m:
            op_name = OP_NAME.search(line)
            out[m.group(1)] = (m.group(2), op_name.group(1) if op_name else "")
    return out


def part_of(op_name: str) -> str:
    """op_name -> 'fwd|bwd PATH', PATH the scoped functions it lies in ('other' if none)."""
    pieces = [p for p in op_name.split("/") if p]
    scopes = [p.rsplit("(", 1)[-1].rstrip(")") for p in pieces]
    path = "/".join(s[len(PREFIX):] for s in scopes if s.startswith(PREFIX)) or "other"
    direction = "bwd" if any(p.startswith("transpose(") for p in pieces) else "fwd"
    return f"{direction} {path}"


def attribute(events: list[dict[str, Any]], instructions: dict[str, tuple[str, str]],
              steps: int) -> dict[str, Any]:
    """Complete trace events of `steps` steps -> seconds per step by part and by opcode."""
    parts, opcodes = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") != "X" or event.get("name") not in instructions:
            continue
        opcode, op_name = instructions[event["name"]]
        if opcode in CONTAINERS:
            continue
        seconds = event["dur"] / 1e6 / steps
        parts[part_of(op_name)] += seconds
        opcodes[opcode if opcode != "fusion" else event["name"].split(".")[0]] += seconds
    total = sum(parts.values())
    return {"op_seconds": total,
            "parts": {k: v / total for k, v in parts.most_common()} if total else {},
            "opcodes": {k: v / total for k, v in opcodes.most_common(12)} if total else {}}


def summary(parts: dict[str, float]) -> dict[str, float]:
    """Shares per outermost scoped function (`world_model.loss`, `behavior.actor_critic_loss`,
    `behavior.repval_loss`; other: the optimiser and the rest), forward and backward together."""
    out = collections.Counter()
    for part, share in parts.items():
        out[part.split(" ", 1)[1].split("/")[0]] += share
    return dict(out.most_common())


def trace_events(fn, steps: int) -> list[dict[str, Any]]:
    """Runs `fn()` `steps` times under the JAX profiler; its complete events."""
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        try:
            for _ in range(steps):
                jax.block_until_ready(fn())
        finally:
            jax.profiler.stop_trace()
        paths = sorted(Path(tmp).rglob("*.trace.json.gz"))
        if not paths:
            raise RuntimeError(f"the JAX profiler wrote no trace under {tmp}")
        with gzip.open(paths[-1]) as f:
            return json.load(f)["traceEvents"]


def profile_train_step(prepared: dict[str, Any], steps: int = 3, warmup: int = 2
                       ) -> dict[str, Any]:
    """Profile of a train step compiled by `benchmark.compile_train_step` inside
    `named_scopes()`: wall seconds per update, the traced operations' seconds, and their
    shares by part and by opcode (fusions by their kind)."""
    compiled, batch = prepared["compiled"], prepared["batch"]
    holder = {"state": prepared["state"], "i": 0}

    def step():
        holder["i"] += 1
        holder["state"], metrics, _ = compiled(holder["state"], batch,
                                               jax.random.PRNGKey(holder["i"]))
        return metrics

    for _ in range(warmup):
        jax.block_until_ready(step())
    start = time.perf_counter()
    events = trace_events(step, steps)
    wall = (time.perf_counter() - start) / steps
    prepared["state"] = holder["state"]
    result = attribute(events, hlo_instructions(compiled.as_text()), steps)
    return {"seconds_per_update_traced": wall, **result, "summary": summary(result["parts"])}
