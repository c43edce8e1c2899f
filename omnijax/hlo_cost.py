"""Matmul FLOPs of a compiled XLA program with every loop body counted as often as the loop runs.

XLA's ``compiled.cost_analysis()`` counts the body of a ``while`` loop once, and omnijax runs its layers
under ``nn.scan`` (a while loop per tower; microbatches add an outer one), so its figure for a 28-layer
LLM counts one layer. ``matmul_flops(compiled.as_text())`` reads the optimized HLO instead: the FLOPs of
every ``dot`` and ``convolution`` (on TPU every matmul is a convolution), each computation weighted by how
many times it runs -- a loop body by its trip count (read from its condition: ``counter < N``), nested
loops multiplied, fusions and calls once per call. Work inside custom calls (Pallas kernels such as splash
attention) is opaque here as it is to XLA.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_NAME = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ")
_DIMS = re.compile(r"^[a-z]\w*\[([\d,]*)\]")
_CALLEE = re.compile(r"\b(calls|body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_LIMIT = re.compile(r"compare\(%?([\w.\-]+), %?([\w.\-]+)\), direction=(LT|LE|GT|GE)")


@dataclasses.dataclass(frozen=True)
class MatmulFlops:
    total: float  # every computation weighted by how often it runs
    once: float  # every loop body counted once, as XLA's cost analysis does
    loops: tuple[tuple[str, int], ...]  # (body, trip count) of each while loop
    unknown_trip_counts: int  # loops whose condition is not ``counter < constant`` (counted once)
    kernels: tuple[str, ...]  # the Pallas TPU (Mosaic) kernels called, by name, sorted


def _split_top(text: str) -> list[str]:
    """Comma-separated parts of ``text`` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _instruction(line: str) -> tuple[str, str, str, list[str], str] | None:
    """``(name, shape, opcode, operand names, attributes)`` of one HLO instruction line."""
    m = _NAME.match(line)
    if not m:
        return None
    rest = line[m.end():]
    if rest.startswith("("):  # a tuple shape
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        shape, rest = rest[:i + 1], rest[i + 2:]
    else:
        shape, _, rest = rest.partition(" ")
    opcode, _, rest = rest.partition("(")
    depth, end = 1, 0
    for end, ch in enumerate(rest):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0:
            break
    operands = [op.split()[-1].lstrip("%") for op in _split_top(rest[:end]) if op]
    return m.group(1), shape, opcode, operands, rest[end + 1:]


def _dims(shape: str) -> list[int] | None:
    m = _DIMS.match(shape)
    return [int(d) for d in m.group(1).split(",") if d] if m else None


def _attr_dims(attrs: str, key: str) -> list[int]:
    m = re.search(rf"\b{key}=\{{([\d,]*)\}}", attrs)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def _flops(opcode: str, shape: str, operands: list[str], attrs: str, shapes: dict[str, str]) -> float:
    out = _dims(shape)
    if out is None or opcode not in ("dot", "convolution"):
        return 0.0
    lhs, rhs = (_dims(shapes.get(op, "")) for op in operands[:2])
    if opcode == "dot":
        if lhs is None:
            return 0.0
        return 2.0 * math.prod(out) * math.prod(lhs[d] for d in _attr_dims(attrs, "lhs_contracting_dims"))
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", attrs)
    if lhs is None or rhs is None or labels is None or "o" not in labels.group(2):
        return 0.0
    lhs_labels, rhs_labels, out_labels = labels.groups()
    # Every output element takes input features x window multiply-adds (rhs elements / output features), less
    # the window taps that fall on padding (XLA writes some batched matmuls as padded convolutions).
    per_output = math.prod(rhs) / rhs[rhs_labels.index("o")]
    window = _window(attrs)
    for i, dim in enumerate(d for d in lhs_labels if d.isdigit()):
        size, stride, (lo, _), lhs_dilate, rhs_dilate = (window[k][i] if k in window else default for k, default in
                                                         (("size", 1), ("stride", 1), ("pad", (0, 0)),
                                                          ("lhs_dilate", 1), ("rhs_dilate", 1)))
        n, out_len = lhs[lhs_labels.index(dim)], out[out_labels.index(dim)]
        valid = _valid_taps(n, out_len, size, stride, lo, lhs_dilate, rhs_dilate)
        per_output *= valid / (out_len * size)
    return 2.0 * math.prod(out) * per_output


def _valid_taps(n: int, out_len: int, size: int, stride: int, lo: int, lhs_dilate: int, rhs_dilate: int) -> int:
    """How many (output position, window tap) pairs of one spatial dimension read an input element rather
    than padding or a hole of the input's dilation (XLA writes batch dimensions of a matmul as spatial ones
    with ``lhs_dilate``, so that each output reads one tap of its window)."""
    span = (n - 1) * lhs_dilate  # the last input element's position in the dilated input
    if lhs_dilate == 1:
        valid = 0
        for k in range(size):  # outputs p with 0 <= p*stride + k*rhs_dilate - lo <= span
            first = max(0, -(-(lo - k * rhs_dilate) // stride))
            last = min(out_len - 1, (span + lo - k * rhs_dilate) // stride)
            valid += max(0, last - first + 1)
        return valid
    x = np.arange(out_len)[:, None] * stride + np.arange(size)[None, :] * rhs_dilate - lo
    return int(np.count_nonzero((x >= 0) & (x <= span) & (x % lhs_dilate == 0)))


def _window(attrs: str) -> dict:
    """A convolution's ``window={size=AxB stride=... pad=lo_hixlo_hi ...}`` as lists per spatial dimension."""
    m = re.search(r"window=\{([^}]*)\}", attrs)
    out = {}
    for item in (m.group(1).split() if m else ()):
        key, _, value = item.partition("=")
        parts = value.split("x")
        out[key] = [tuple(int(v) for v in p.split("_")) for p in parts] if key == "pad" else (
            [int(v) for v in parts] if key != "rhs_reversal" else parts)
    return out


def _trip_count(condition: list[str]) -> int | None:
    """N of a loop condition ``counter < N`` (the counter starts at 0 and counts up by one, as in a scan)."""
    constants = {}
    for line in condition:
        ins = _instruction(line)
        if ins and ins[2] == "constant":
            m = re.search(r"constant\((-?\d+)\)", line)
            if m:
                constants[ins[0]] = int(m.group(1))
    for line in condition:
        m = _LIMIT.search(line)
        if m and "ROOT" in line:
            a, b, direction = m.groups()
            if direction in ("LT", "LE") and b in constants:
                return constants[b] + (direction == "LE")
            if direction in ("GT", "GE") and a in constants:
                return constants[a] + (direction == "GE")
    return None


def matmul_flops(hlo_text: str) -> MatmulFlops:
    """The matmul FLOPs of an optimized HLO module's text (``compiled.as_text()``), per device."""
    bodies: dict[str, list[str]] = {}
    order, current, entry = [], None, None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            bodies[current] = []
            order.append(current)
            if line.startswith("ENTRY"):
                entry = current
        elif current is not None and line.strip() != "}":
            bodies[current].append(line)
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text; pass compiled.as_text()")
    own, calls, loops, unknown, kernels = {}, {}, [], 0, set()
    for name, lines in bodies.items():
        shapes, flops, edges = {}, 0.0, []
        for line in lines:
            ins = _instruction(line)
            if ins is None:
                continue
            iname, shape, opcode, operands, attrs = ins
            shapes[iname] = shape
            if opcode == "custom-call" and 'custom_call_target="tpu_custom_call"' in attrs:
                kernels.add(re.sub(r"(\.\d+)+$", "", iname))
            flops += _flops(opcode, shape, operands, attrs, shapes)
            callees = dict((k, v) for k, v in _CALLEE.findall(attrs))
            if opcode == "while":
                trips = _trip_count(bodies.get(callees.get("condition", ""), []))
                if trips is None:
                    unknown += 1
                loops.append((callees["body"], trips or 1))
                edges.append((callees["body"], trips or 1))
            else:
                edges += [(v, 1) for k, v in callees.items() if k in ("calls", "true_computation", "false_computation")]
                branches = _BRANCHES.search(attrs)
                if branches:
                    edges += [(b.strip().lstrip("%"), 1) for b in branches.group(1).split(",")]
        own[name], calls[name] = flops, edges
    # Callees are printed before their callers: walk from the entry down, callers first.
    runs = dict.fromkeys(bodies, 0.0)
    reached = dict.fromkeys(bodies, False)
    runs[entry], reached[entry] = 1.0, True
    for name in reversed(order):
        for callee, times in calls[name]:
            if callee in runs:
                runs[callee] += runs[name] * times
                reached[callee] = reached[callee] or reached[name]
    total = sum(own[n] * runs[n] for n in bodies)
    once = sum(own[n] for n in bodies if reached[n])
    return MatmulFlops(total=total, once=once, loops=tuple(loops), unknown_trip_counts=unknown,
                       kernels=tuple(sorted(kernels)))
