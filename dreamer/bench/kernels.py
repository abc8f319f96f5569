"""Launched work of a compiled program, read from its optimized HLO text.

On a GPU every top-level HLO instruction that computes (a fusion, a matmul, a copy, a custom
call, ...) is one kernel launch, and every iteration of a `while` loop evaluates its condition
and hands the predicate back to the host before the next iteration starts. For a small model
such as DreamerV3's size1m these launches and syncs, not arithmetic, bound the update. This
module counts both from the text of a compiled function (`compiled.as_text()`), so that the
proxy can be tracked on any machine, the CPU included:

- `kernels`: the launch-like instructions of the entry computation, plus, for each while loop,
  those of its body and condition times the loop's trip count (nested loops multiply);
  the instructions of fused computations are inside their fusion's one launch and are not
  counted again.
- `loop_iterations`: the total number of while-loop iterations one call runs (each one a host
  round trip for the loop's predicate on a GPU).

Instructions that move no data and launch nothing (parameters, constants, tuples and their
elements, bitcasts, ordering tokens) are not counted. The CPU backend fuses a little less than
the GPU one, so counts from a CPU compile are a proxy for a GPU's, comparable between two
programs compiled the same way.

One difference is known and split out: JAX lowers its random-bit generator (threefry2x32) on
the CPU as a rolled loop of 5 rounds and on GPUs and TPUs as straight-line code that fuses into
the kernels around it. `Count.rng_kernels` and `rng_iterations` are what such loops (trip count
5, inside a `jax.random` function's scope) add to a CPU count; the rest is the estimate for an
accelerator.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# Opcodes that launch nothing: bookkeeping of values and of execution order.
FREE = frozenset({
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
    "opt-barrier", "add-dependency", "partition-id", "replica-id", "domain",
})
# Opcodes whose work is that of other computations they name.
CONTAINERS = frozenset({"while", "call", "conditional"})

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s+=\s+(.*)$")
_OPCODE = re.compile(r"^([\w\-]+)\(")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')
_COMP_ATTR = {
    "condition": re.compile(r"\bcondition=%?([\w.\-]+)"),
    "body": re.compile(r"\bbody=%?([\w.\-]+)"),
    "to_apply": re.compile(r"\bto_apply=%?([\w.\-]+)"),
    "calls": re.compile(r"\bcalls=%?([\w.\-]+)"),
    "branches": re.compile(r"\bbranch_computations=\{([^}]*)\}"),
    "true": re.compile(r"\btrue_computation=%?([\w.\-]+)"),
    "false": re.compile(r"\bfalse_computation=%?([\w.\-]+)"),
}
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CONSTANT = re.compile(r"constant\((-?\d+)\)")
# The scopes of jax.random's functions, in which the CPU lowering's rolled threefry loop sits.
_RNG_SCOPE = re.compile(r"threefry|random_bits|jit\(_(uniform|gumbel|normal|bernoulli|randint|"
                        r"truncated_normal|categorical)\)")
THREEFRY_ROUNDS = 5  # the trip count of that loop


@dataclass
class Instruction:
    name: str
    opcode: str
    text: str  # everything after "name = "


@dataclass
class Loop:
    """One while loop: where it is, how often it runs and what one iteration launches."""

    name: str
    trip_count: int | None   # None: not known from the HLO (counted as 1)
    body_kernels: int        # one iteration's launches (body + condition), nested loops in
    scope: str               # the op_name of the loop's instruction (which scan it is)
    depth: int               # 0 for a loop in the entry computation
    calls: int = 1           # how often the loop itself runs per call of the program

    @property
    def cpu_rng(self) -> bool:
        """Whether it is the CPU lowering's rolled loop of the random-bit generator."""
        return self.trip_count == THREEFRY_ROUNDS and bool(_RNG_SCOPE.search(self.scope))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "trip_count": self.trip_count,
                "body_kernels": self.body_kernels, "runs": self.calls,
                "kernels": self.body_kernels * (self.trip_count or 1) * self.calls,
                "scope": self.scope, "depth": self.depth}


@dataclass
class Count:
    """What one call of a compiled program launches (see the module docstring)."""

    kernels: int
    loop_iterations: int
    outside_loops: int
    loops: list[Loop] = field(default_factory=list)
    by_opcode: dict[str, int] = field(default_factory=dict)

    @property
    def rng_kernels(self) -> int:
        """Launches in the CPU's rolled random-bit loops (straight-line code on GPUs/TPUs)."""
        return sum(loop.body_kernels * (loop.trip_count or 1) * loop.calls
                   for loop in self.loops if loop.cpu_rng)

    @property
    def rng_iterations(self) -> int:
        """Iterations of the CPU's rolled random-bit loops."""
        return sum((loop.trip_count or 1) * loop.calls for loop in self.loops if loop.cpu_rng)

    def as_dict(self) -> dict[str, Any]:
        return {"kernels": self.kernels, "loop_iterations": self.loop_iterations,
                "rng_kernels": self.rng_kernels, "rng_iterations": self.rng_iterations,
                "kernels_outside_loops": self.outside_loops,
                "while_loops": len(self.loops),
                "unknown_trip_counts": sum(loop.trip_count is None for loop in self.loops),
                "by_opcode": dict(sorted(self.by_opcode.items(), key=lambda kv: -kv[1])),
                "loops": [loop.as_dict() for loop in self.loops]}


def parse(text: str) -> tuple[str, dict[str, list[Instruction]]]:
    """HLO module text -> (entry computation's name, {computation: instructions})."""
    comps: dict[str, list[Instruction]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if current is None:
            match = _HEADER.match(line)
            if match:
                current = match.group(2)
                comps[current] = []
                if match.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        match = _INSTR.match(line)
        if match:
            name, rest = match.groups()
            comps[current].append(Instruction(name, _opcode(rest), rest))
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text (is it an HloModule's text?)")
    return entry, comps


def _opcode(rest: str) -> str:
    """The opcode of an instruction's right-hand side `shape opcode(operands), attrs`."""
    i = 0
    if rest.startswith("("):  # a tuple shape: skip to its matching parenthesis
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        i += 1
    else:
        i = rest.find(" ")
    match = _OPCODE.match(rest[i:].lstrip())
    return match.group(1) if match else "?"


def _trip_count(instr: Instruction, comps: dict[str, list[Instruction]]) -> int | None:
    """The loop's trip count from XLA's annotation, else from a single integer constant that
    its condition compares the counter with (the form `lax.scan` lowers to)."""
    match = _TRIP.search(instr.text)
    if match:
        return int(match.group(1))
    cond = _COMP_ATTR["condition"].search(instr.text)
    consts = {int(m.group(1)) for i in comps.get(cond.group(1), []) if cond
              for m in _CONSTANT.finditer(i.text) if i.opcode == "constant"}
    return consts.pop() if len(consts) == 1 else None


def count(text: str) -> Count:
    """Kernels and while-loop iterations that one call of the program launches."""
    entry, comps = parse(text)
    loops: list[Loop] = []
    by_opcode: dict[str, int] = {}

    def walk(comp: str, times: int, depth: int, record: bool) -> tuple[int, int]:
        """(kernels, loop iterations) of one run of `comp`; `times` runs happen per call."""
        kernels = iterations = 0
        for instr in comps[comp]:
            if instr.opcode in FREE:
                continue
            if instr.opcode == "while":
                trip = _trip_count(instr, comps)
                n = trip or 1
                body = _COMP_ATTR["body"].search(instr.text).group(1)
                cond = _COMP_ATTR["condition"].search(instr.text).group(1)
                loop = Loop(instr.name, trip, 0, _scope(instr), depth, times) if record else None
                if loop:
                    loops.append(loop)
                body_k, body_it = walk(body, times * n, depth + 1, record)
                cond_k, _ = walk(cond, times * n, depth + 1, record)
                if loop:
                    loop.body_kernels = body_k + cond_k
                kernels += n * (body_k + cond_k)
                iterations += n * (1 + body_it)
            elif instr.opcode == "call":
                callee = (_COMP_ATTR["to_apply"].search(instr.text)
                          or _COMP_ATTR["calls"].search(instr.text)).group(1)
                k, it = walk(callee, times, depth, record)
                kernels, iterations = kernels + k, iterations + it
            elif instr.opcode == "conditional":
                branches = _branches(instr)
                # Only one branch runs: count the costlier one (and the predicate's launch).
                costs = [walk(b, times, depth, False) for b in branches]
                k, it = max(costs) if costs else (0, 0)
                kernels, iterations = kernels + k + 1, iterations + it
                if record:
                    by_opcode["conditional"] = by_opcode.get("conditional", 0) + times
            else:
                kernels += 1
                if record:
                    by_opcode[instr.opcode] = by_opcode.get(instr.opcode, 0) + times
        return kernels, iterations

    kernels, iterations = walk(entry, 1, 0, True)
    outside = sum(1 for i in comps[entry] if i.opcode not in FREE | CONTAINERS)
    return Count(kernels, iterations, outside, loops, by_opcode)


def _branches(instr: Instruction) -> list[str]:
    match = _COMP_ATTR["branches"].search(instr.text)
    if match:
        return [b.strip().lstrip("%") for b in match.group(1).split(",") if b.strip()]
    return [m.group(1) for key in ("true", "false")
            if (m := _COMP_ATTR[key].search(instr.text))]


def _scope(instr: Instruction) -> str:
    match = _OP_NAME.search(instr.text)
    return match.group(1) if match else ""


def of_compiled(compiled: Any) -> Count:
    """`count` of a `jax.stages.Compiled` (e.g. `jax.jit(f).lower(...).compile()`)."""
    return count(compiled.as_text())


def summary(c: Count, top: int = 6) -> dict[str, Any]:
    """The headline numbers and the `top` loops by launches, for a benchmark's JSON line."""
    loops = sorted(c.loops, key=lambda loop: -loop.body_kernels * (loop.trip_count or 1)
                   * loop.calls)[:top]
    return {"kernels": c.kernels, "loop_iterations": c.loop_iterations,
            "rng_kernels": c.rng_kernels, "rng_iterations": c.rng_iterations,
            "kernels_without_rng": c.kernels - c.rng_kernels,
            "loop_iterations_without_rng": c.loop_iterations - c.rng_iterations,
            "kernels_outside_loops": c.outside_loops, "while_loops": len(c.loops),
            "top_loops": [loop.as_dict() for loop in loops]}


if __name__ == "__main__":  # python -m dreamer.bench.kernels FILE.hlo: the counts of a dumped module
    import sys

    with open(sys.argv[1]) as f:
        print(json.dumps(summary(count(f.read()))))
