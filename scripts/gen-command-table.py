#!/usr/bin/env python3
"""Generates src/command/table.rs from real servers' COMMAND INFO and COMMAND DOCS.

Usage: scripts/gen-command-table.py [--bin DIR] [--out FILE] [--dump JSON]

Starts every server binary it knows of in DIR (default .servers/bin) on a free loopback port,
reads `COMMAND INFO` (every command, subcommands included) and `COMMAND DOCS` (7.0+), stops
it, and writes one Rust table. Nothing is copied from elsewhere: the table is what the servers
say. Servers (oldest first; a later one's data wins where they differ):

    redis-6.2-server, redis-7.0-server, redis-8.2-server, valkey-8.1-server, valkey-9.1-server

(see scripts/install-servers.sh for where each comes from). No Redis 7.2 binary was found in
the package registries, so 7.2-only behaviour is covered by 7.0 and 8.2 on either side.

A server binary that is missing is an error (the table must not silently lose one).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

SERVERS = [
    # (binary, short name used in the table)
    ("redis-6.2-server", "redis-6.2"),
    ("redis-7.0-server", "redis-7.0"),
    ("redis-8.2-server", "redis-8.2"),
    ("valkey-8.1-server", "valkey-8.1"),
    ("valkey-9.1-server", "valkey-9.1"),
]

# Flag names as the servers spell them (6.2 uses '-' in a few, 7.0 '_').
FLAGS = [
    "write", "readonly", "denyoom", "module", "admin", "pubsub", "noscript", "random",
    "sort_for_script", "blocking", "loading", "stale", "skip_monitor", "skip_slowlog",
    "asking", "fast", "no_auth", "may_replicate", "no_mandatory_keys", "no_multi",
    "movablekeys", "allow_busy", "module_no_cluster", "no_async_loading", "touches_arbitrary_keys", "skip_commandlog",
]
KEY_FLAGS = [
    "RO", "RW", "OW", "RM", "access", "update", "insert", "delete", "not_key",
    "incomplete", "variable_flags",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Resp:
    """A minimal RESP2 client (enough for COMMAND INFO/DOCS)."""

    def __init__(self, port):
        deadline = time.time() + 10
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.f = self.sock.makefile("rb")

    def call(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self.read()

    def read(self):
        line = self.f.readline()
        if not line:
            raise EOFError("server closed the connection")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RuntimeError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data.decode()
        if t == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self.read() for _ in range(n)]
        raise ValueError(f"unexpected reply type {line!r}")


def pairs(flat):
    """A RESP2 flattened map as a dict."""
    if isinstance(flat, dict):
        return flat
    return {flat[i]: flat[i + 1] for i in range(0, len(flat or []), 2)}


def parse_spec(raw):
    spec = pairs(raw)
    bs = pairs(spec["begin_search"])
    fk = pairs(spec["find_keys"])
    bss = pairs(bs.get("spec") or [])
    fks = pairs(fk.get("spec") or [])
    if bs["type"] == "index":
        begin = {"type": "index", "index": int(bss["index"])}
    elif bs["type"] == "keyword":
        begin = {"type": "keyword", "keyword": bss["keyword"], "startfrom": int(bss["startfrom"])}
    else:
        begin = {"type": "unknown"}
    if fk["type"] == "range":
        find = {"type": "range", "lastkey": int(fks["lastkey"]), "step": int(fks["keystep"]),
                "limit": int(fks["limit"])}
    elif fk["type"] == "keynum":
        find = {"type": "keynum", "keynumidx": int(fks["keynumidx"]),
                "firstkey": int(fks["firstkey"]), "step": int(fks["keystep"])}
    else:
        find = {"type": "unknown"}
    return {"flags": sorted(spec.get("flags") or []), "begin": begin, "find": find}


def parse_info(entry):
    name = entry[0].lower()
    cmd = {
        "name": name,
        "arity": int(entry[1]),
        "flags": sorted(f.replace("-", "_") for f in entry[2]),
        "first": int(entry[3]),
        "last": int(entry[4]),
        "step": int(entry[5]),
        "acl": sorted(c.lstrip("@") for c in (entry[6] if len(entry) > 6 else [])),
        "specs": [parse_spec(s) for s in (entry[8] if len(entry) > 8 else [])],
        "subs": {},
    }
    for sub in entry[9] if len(entry) > 9 else []:
        s = parse_info(sub)
        cmd["subs"][s["name"]] = s
    return cmd


def read_server(binary, short):
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", tmp, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            c = Resp(port)
            info = c.call("COMMAND", "INFO")
            if isinstance(info, Exception) or not info or all(e is None for e in info):
                # 6.2: COMMAND INFO without names answers nothing; COMMAND lists everything.
                info = c.call("COMMAND")
            cmds = {}
            for entry in info:
                if entry is None:
                    continue
                cmd = parse_info(entry)
                cmds[cmd["name"]] = cmd
            docs = c.call("COMMAND", "DOCS")
            if not isinstance(docs, Exception):
                docs = pairs(docs)
                for name, doc in docs.items():
                    doc = pairs(doc)
                    cmd = cmds.get(name.lower())
                    if cmd is None:
                        continue
                    cmd["since"] = doc.get("since", "")
                    cmd["group"] = doc.get("group", "")
                    cmd["args"] = doc.get("arguments") or []
                    for sname, sdoc in pairs(doc.get("subcommands") or []).items():
                        sdoc = pairs(sdoc)
                        sub = cmd["subs"].get(sname.lower())
                        if sub is not None:
                            sub["since"] = sdoc.get("since", "")
                            sub["group"] = sdoc.get("group", "")
                            sub["args"] = sdoc.get("arguments") or []
            try:
                c.call("SHUTDOWN", "NOSAVE")
            except EOFError:
                pass  # SHUTDOWN closes the connection without a reply.
        finally:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return cmds


def view(cmd):
    """What one server says of a command, for the per-server variants."""
    return {"arity": cmd["arity"], "flags": cmd["flags"],
            "legacy": (cmd["first"], cmd["last"], cmd["step"]), "specs": cmd.get("specs", [])}


def merge(per_server):
    """One entry per command: the newest server's data, with which servers have it."""
    merged = {}
    for short, cmds in per_server:
        for name, cmd in cmds.items():
            m = merged.setdefault(name, {"servers": [], "subs": {}})
            m["servers"].append(short)
            for k, v in cmd.items():
                if k in ("subs", "since", "group", "args") or k == "name":
                    continue
                m[k] = v
            m["name"] = name
            m.setdefault("views", {})[short] = view(cmd)
            for k in ("since", "group"):
                if cmd.get(k):
                    m[k] = cmd[k]
            for sname, sub in cmd["subs"].items():
                ms = m["subs"].setdefault(sname, {"servers": [], "subs": {}})
                ms["servers"].append(short)
                for k, v in sub.items():
                    if k in ("subs", "since", "group", "args"):
                        continue
                    ms[k] = v
                ms.setdefault("views", {})[short] = view(sub)
                for k in ("since", "group"):
                    if sub.get(k):
                        ms[k] = sub[k]
    return merged


def rust_str(s):
    return json.dumps(s)


def bits(names, table, what):
    out = []
    for n in names:
        if n not in table:
            sys.exit(f"unknown {what} {n!r}: add it to the generator's list and to src/command/mod.rs")
        out.append(table.index(n))
    return out


def spec_rs(s):
    kf = " | ".join(f"KF_{f.upper()}" for f in s["flags"]) or "0"
    b = s["begin"]
    if b["type"] == "index":
        begin = f"Begin::Index({b['index']})"
    elif b["type"] == "keyword":
        begin = f"Begin::Keyword({rust_str(b['keyword'])}, {b['startfrom']})"
    else:
        begin = "Begin::Unknown"
    f = s["find"]
    if f["type"] == "range":
        find = f"Find::Range {{ last: {f['lastkey']}, step: {f['step']}, limit: {f['limit']} }}"
    elif f["type"] == "keynum":
        find = (f"Find::Keynum {{ index: {f['keynumidx']}, first: {f['firstkey']}, "
                f"step: {f['step']} }}")
    else:
        find = "Find::Unknown"
    return f"KeySpec {{ flags: {kf}, begin: {begin}, find: {find} }}"


def cmd_rs(c, server_names, sub_ref, indent):
    flags = " | ".join(f"F_{f.upper()}" for f in c["flags"]) or "0"
    acl = " | ".join(f"A_{a.upper().replace('-', '_')}" for a in c["acl"]) or "0"
    servers = " | ".join(f"S_{s.upper().replace('-', '_').replace('.', '_')}" for s in c["servers"])
    specs = ", ".join(spec_rs(s) for s in c.get("specs", []))
    pad = " " * indent
    main = view(c)
    any_flags = sorted({f for v in c["views"].values() for f in v["flags"]})
    any_flags = " | ".join(f"F_{f.upper()}" for f in any_flags) or "0"
    variants = []
    for short, v in c["views"].items():
        if v == main:
            continue
        vflags = " | ".join(f"F_{f.upper()}" for f in v["flags"]) or "0"
        vspecs = ", ".join(spec_rs(x) for x in v["specs"])
        sbit = f"S_{short.upper().replace('-', '_').replace('.', '_')}"
        first, last, step = v["legacy"]
        variants.append(
            f"Variant {{ server: {sbit}, arity: {v['arity']}, flags: {vflags}, "
            f"legacy: ({first}, {last}, {step}), key_specs: &[{vspecs}] }}")
    return (
        f"{pad}Command {{\n"
        f"{pad}    name: {rust_str(c['name'])},\n"
        f"{pad}    arity: {c['arity']},\n"
        f"{pad}    flags: {flags},\n"
        f"{pad}    any_flags: {any_flags},\n"
        f"{pad}    acl: {acl},\n"
        f"{pad}    legacy: ({c['first']}, {c['last']}, {c['step']}),\n"
        f"{pad}    key_specs: &[{specs}],\n"
        f"{pad}    subcommands: {sub_ref},\n"
        f"{pad}    since: {rust_str(c.get('since', ''))},\n"
        f"{pad}    group: {rust_str(c.get('group', ''))},\n"
        f"{pad}    servers: {servers},\n"
        f"{pad}    variants: &[{', '.join(variants)}],\n"
        f"{pad}}},\n"
    )


def fnv1a(name):
    h = 0x811C9DC5
    for b in name.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def generate(merged, server_names, acl_names):
    names = sorted(merged)
    out = []
    out.append("// @generated by scripts/gen-command-table.py from the real servers' COMMAND INFO and\n")
    out.append("// COMMAND DOCS. Do not edit: run the script again.\n")
    out.append(f"// Servers: {', '.join(server_names)}.\n\n")
    out.append("use super::*;\n\n")
    out.append("/// Servers the table was read from (bit `i` of [`Command::servers`] is `SERVERS[i]`).\n")
    out.append(f"pub const SERVERS: &[&str] = &[{', '.join(rust_str(s) for s in server_names)}];\n")
    for i, s in enumerate(server_names):
        out.append(f"pub const S_{s.upper().replace('-', '_').replace('.', '_')}: u8 = 1 << {i};\n")
    out.append("\n/// ACL categories, bit `i` of [`Command::acl`] is `ACL_CATEGORIES[i]`.\n")
    out.append(f"pub const ACL_CATEGORIES: &[&str] = &[{', '.join(rust_str(a) for a in acl_names)}];\n")
    for i, a in enumerate(acl_names):
        out.append(f"pub const A_{a.upper().replace('-', '_')}: u64 = 1 << {i};\n")
    out.append("\n")
    for n in names:
        subs = merged[n]["subs"]
        if not subs:
            continue
        ident = "SUB_" + n.upper().replace("-", "_")
        out.append(f"static {ident}: &[Command] = &[\n")
        for sname in sorted(subs):
            out.append(cmd_rs(subs[sname], server_names, "&[]", 4))
        out.append("];\n\n")
    out.append("/// Every command, sorted by name; a command's id is its index here.\n")
    out.append("pub static COMMANDS: &[Command] = &[\n")
    for n in names:
        subs = merged[n]["subs"]
        ref = "SUB_" + n.upper().replace("-", "_") if subs else "&[]"
        out.append(cmd_rs(merged[n], server_names, ref, 4))
    out.append("];\n\n")
    out.append("/// Top-level names, by id (for metrics labels).\n")
    out.append("pub static NAMES: &[&str] = &[\n")
    for n in names:
        out.append(f"    {rust_str(n)},\n")
    out.append("];\n\n")
    # Open-addressing hash table over FNV-1a of the lower-case name: slot -> id + 1.
    slots = 1024
    while slots < 4 * len(names):
        slots *= 2
    table = [0] * slots
    for i, n in enumerate(names):
        s = fnv1a(n) & (slots - 1)
        while table[s]:
            s = (s + 1) & (slots - 1)
        table[s] = i + 1
    out.append("/// FNV-1a of the lower-case name, open addressing: slot -> id + 1 (0: empty).\n")
    out.append(f"pub static SLOTS: [u16; {slots}] = [\n")
    for i in range(0, slots, 16):
        out.append("    " + ", ".join(str(v) for v in table[i:i + 16]) + ",\n")
    out.append("];\n")
    return "".join(out)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(root, ".servers", "bin"))
    ap.add_argument("--out", default=os.path.join(root, "src", "command", "table.rs"))
    ap.add_argument("--dump", help="also write the raw per-server data as JSON here")
    opts = ap.parse_args()
    per_server = []
    for binary, short in SERVERS:
        path = os.path.join(opts.bin, binary)
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run scripts/install-servers.sh")
        per_server.append((short, read_server(path, short)))
        print(f"{short}: {len(per_server[-1][1])} commands", file=sys.stderr)
    if opts.dump:
        with open(opts.dump, "w") as f:
            json.dump(dict(per_server), f, indent=1, sort_keys=True)
    merged = merge(per_server)
    acl = set()
    for c in merged.values():
        for x in [c] + list(c["subs"].values()):
            acl.update(x["acl"])
            for f in x["flags"]:
                if f not in FLAGS:
                    sys.exit(f"unknown command flag {f!r} (from {x['name']}): add it to FLAGS")
            for s in x.get("specs", []):
                for f in s["flags"]:
                    if f not in KEY_FLAGS:
                        sys.exit(f"unknown key-spec flag {f!r}: add it to KEY_FLAGS")
    text = generate(merged, [s for _, s in SERVERS], sorted(acl))
    with open(opts.out, "w") as f:
        f.write(text)
    print(f"wrote {opts.out}: {len(merged)} commands", file=sys.stderr)


if __name__ == "__main__":
    main()
