"""Collectives (count and per-device bytes, by kind) in a compiled program's optimized HLO text
(``compiled.as_text()``).

What the TPU compiler (libtpu 0.0.42) emits, and how it is counted:
  * plain ops: all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute,
    ragged-all-to-all, collective-broadcast (tuple results = combined ops, bytes summed)
  * async pairs  X-start / X-done  -> counted once, at X-done (its result is the output)
  * async-start/async-done wrappers -> the wrapped op is counted inside the called computation
  * TPU reduce-scatter: a `fusion(...), kind=kCustom, calls=%all-reduce-scatter...` whose body is
    all-reduce + dynamic-slice -> counted as ONE reduce-scatter (body's all-reduce not counted)
  * multi-slice (num_slices>1): the DCN leg of a collective is a `send`/`recv` pair with
    is_host_transfer=true, _xla_host_transfer_handler_name="xla_megascale_runtime" -> "dcn-send"
  * ops inside while bodies are multiplied by `known_trip_count` (lax.scan over layers)
Bytes: `bytes` = per-device result bytes; `operand_bytes` = per-device input bytes.
"""
from __future__ import annotations

import re
from collections import defaultdict

DTYPE_BYTES = {
    "pred": 1, "s2": 0.25, "u2": 0.25, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2,
    "s32": 4, "u32": 4, "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8,
    "c64": 8, "c128": 16, "token": 0,
}
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "ragged-all-to-all",
         "collective-permute", "collective-broadcast", "dcn-send")  # dcn-send: multi-slice (Megascale)
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,]*)\]")
_COMP_HDR = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\((.*)\)\s*->\s*(.*?)\s*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s([a-z][a-z0-9\-]*)\((.*)$")
_CALLS = re.compile(r"\b(calls|body|condition|to_apply)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def type_bytes(type_str: str) -> int:
    total = 0.0
    for dtype, dims in _ARRAY.findall(type_str):
        if dtype.startswith("f8") or dtype.startswith("f4") or dtype.startswith("f6"):
            size = 1 if dtype.startswith("f8") else 0.5
        else:
            size = DTYPE_BYTES.get(dtype)
            if size is None:
                continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * size
    return int(total)


def _operands(rest: str) -> list[str]:
    depth, out = 1, []
    for i, ch in enumerate(rest):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                out = re.findall(r"%([\w.\-]+)", rest[:i])
                break
    return out


def parse_hlo(text: str):
    comps, entry, cur = {}, None, None
    for line in text.splitlines():
        if cur is None:
            m = _COMP_HDR.match(line)
            if m:
                cur = m.group(2)
                comps[cur] = {"params": m.group(3), "instrs": []}
                if m.group(1):
                    entry = cur
            continue
        if line.strip() == "}":
            cur = None
            continue
        m = _INSTR.match(line)
        if m:
            name, typ, op, rest = m.groups()
            comps[cur]["instrs"].append({"name": name, "type": typ, "op": op, "rest": rest,
                                         "operands": _operands(rest)})
    return comps, entry


def _trip_count(ins, comps) -> int:
    """known_trip_count if present (CPU/GPU HLO); else infer from the TPU condition computation
    `ROOT compare(get-tuple-element(param), constant(N)), direction=LT` (scan: counter starts at 0)."""
    m = _TRIP.search(ins["rest"])
    if m:
        return int(m.group(1))
    cond = dict(_CALLS.findall(ins["rest"])).get("condition")
    instrs = comps.get(cond, {"instrs": []})["instrs"]
    consts = {}
    for i in instrs:
        c = re.match(r"\s*(-?\d+)\)", i["rest"]) if i["op"] == "constant" else None
        if c:
            consts[i["name"]] = int(c.group(1))
    root = instrs[-1] if instrs else None  # ROOT is printed last
    if root is not None and root["op"] == "compare":
        d = re.search(r"direction=(\w+)", root["rest"])
        vals = [consts[o] for o in root["operands"] if o in consts]
        if vals and d:
            n = vals[0]
            return max(1, n + 1 if d.group(1) in ("LE", "GE") else n)
    return 1


def count_collectives(text: str) -> dict:
    comps, entry = parse_hlo(text)
    sizes = {i["name"]: type_bytes(i["type"]) for c in comps.values() for i in c["instrs"]}

    # Reduce-scatter fusions on TPU: kCustom fusion calling a computation with all-reduce+dynamic-slice.
    def is_rs_body(cname):
        ops = {i["op"] for i in comps.get(cname, {"instrs": []})["instrs"]}
        return "all-reduce" in ops and ("dynamic-slice" in ops or "slice" in ops)

    # Multiplier per computation from the call graph (while bodies x known_trip_count).
    mult = defaultdict(int)
    absorbed = set()
    order = [entry] if entry else list(comps)
    mult.update({c: 1 for c in order})
    seen = set()
    while order:
        c = order.pop(0)
        if c in seen or c not in comps:
            continue
        seen.add(c)
        for ins in comps[c]["instrs"]:
            callees = [(k, v) for k, v in _CALLS.findall(ins["rest"])]
            for b in _BRANCHES.findall(ins["rest"]):
                callees += [("branch", x.strip().lstrip("%")) for x in b.split(",") if x.strip()]
            trip = _trip_count(ins, comps) if ins["op"] == "while" else 1
            for kind, callee in callees:
                factor = trip if kind == "body" else 1
                mult[callee] = max(mult[callee], mult[c] * factor)
                if ins["op"] == "fusion" and is_rs_body(callee):
                    absorbed.add(callee)
                order.append(callee)

    stats = {k: {"count": 0, "bytes": 0, "operand_bytes": 0} for k in KINDS}
    ops = []
    for cname, comp in comps.items():
        if cname in absorbed or mult.get(cname, 0) == 0:
            continue
        m = mult[cname]
        for ins in comp["instrs"]:
            op, kind = ins["op"], None
            if op in KINDS:
                kind = op
            elif op.endswith("-done") and op[:-5] in KINDS:
                kind = op[:-5]
            elif op == "send" and "xla_megascale_runtime" in ins["rest"]:
                kind = "dcn-send"  # cross-slice part of a collective, lowered to host-transfer send/recv
            elif op == "fusion":
                callee = dict(_CALLS.findall(ins["rest"])).get("calls")
                if callee in absorbed:
                    kind = "reduce-scatter"
            if kind is None:
                continue
            out_b = sizes[ins["name"]]
            in_b = sum(sizes.get(o, 0) for o in ins["operands"])
            if kind == "dcn-send":
                out_b = in_b = sizes.get(ins["operands"][0], 0) if ins["operands"] else 0
            if op.endswith("-done"):  # operand of X-done is the X-start tuple; use its first operand
                start = next((j for j in comp["instrs"] if j["name"] in ins["operands"]), None)
                in_b = sum(sizes.get(o, 0) for o in start["operands"]) if start else out_b
            st = stats[kind]
            st["count"] += m
            st["bytes"] += m * out_b
            st["operand_bytes"] += m * in_b
            ops.append({"kind": kind, "name": ins["name"], "computation": cname, "times": m,
                        "bytes": out_b, "operand_bytes": in_b})
    return {"by_kind": {k: v for k, v in stats.items() if v["count"]}, "ops": ops}
