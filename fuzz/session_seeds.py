"""Writes fuzz/seeds/client_session/ and fuzz/seeds/server_session/: inputs
of the two session targets.

Run from the repository root: python3 fuzz/session_seeds.py

An input is a flags byte, then frames, each a big-endian u16 length and its
bytes (see fuzz_targets/client_session.rs and server_session.rs).
client_session: every server frame of protocol/tests/vectors.json alone, and
a few sessions against the target's fixture (~/granted/** granted;
~/secret.txt beside it; the symlink ~/granted/escape to a folder outside).
server_session: every client frame of the vectors alone (the hello and
resume aside: the target sends its own hello), and sessions that answer the
target's command's requests in order. No dependency: a small MessagePack
encoder for the few types the frames use.
"""
import json
import os
import struct


def pack(value):
    if value is None:
        return b"\xc0"
    if value is True:
        return b"\xc3"
    if value is False:
        return b"\xc2"
    if isinstance(value, int):
        if 0 <= value < 128:
            return bytes([value])
        return b"\xcf" + struct.pack(">Q", value)
    if isinstance(value, str):
        raw = value.encode()
        assert len(raw) < 256
        return (bytes([0xA0 | len(raw)]) if len(raw) < 32 else b"\xd9" + bytes([len(raw)])) + raw
    if isinstance(value, bytes):
        assert len(value) < 256
        return b"\xc4" + bytes([len(value)]) + value
    if isinstance(value, list):
        assert len(value) < 16
        return bytes([0x90 | len(value)]) + b"".join(pack(v) for v in value)
    if isinstance(value, dict):
        assert len(value) < 16
        return bytes([0x80 | len(value)]) + b"".join(pack(k) + pack(v) for k, v in value.items())
    raise TypeError(value)


def request(id, kind, **fields):
    return pack({"t": "request", "id": id, "op": {"k": kind, **fields}})


def seed(*frames, flags=0):
    return bytes([flags]) + b"".join(struct.pack(">H", len(f)) + f for f in frames)


seeds = {}
for vector in json.load(open("protocol/tests/vectors.json")):
    if vector["direction"] == "server" and "welcome" not in vector["name"]:
        seeds[vector["name"]] = seed(bytes.fromhex(vector["hex"]))
seeds["session_writes_reads_and_escapes"] = seed(
    request(1, "file_write", path="~/granted/new.txt", bytes=b"new\n", mode=0o644),
    request(2, "file_read", path="~/granted/a.txt", offset=0, len=1024),
    request(3, "file_read", path="~/secret.txt", offset=0, len=1024),
    request(4, "file_write", path="~/granted/escape/file.txt", bytes=b"x", mode=0o644),
    request(5, "file_write", path="~/granted/secret-link", bytes=b"x", mode=0o644),
    request(6, "dir_list", path="~/granted"),
    pack({"t": "data", "sid": 1, "bytes": b"done\n"}),
    pack({"t": "exit", "status": 0}),
)
seeds["session_streamed_write"] = seed(
    request(1, "file_write_open", path="~/granted/big.bin", mode=0o600),
    request(2, "file_write_chunk", handle=1, offset=0, bytes=b"chunk"),
    request(3, "file_write_commit", handle=1),
    request(4, "file_write_open", path="~/granted/sub/other.bin", mode=0o600),
    request(5, "file_write_abort", handle=2),
)
seeds["session_folders"] = seed(
    request(1, "dir_create", path="~/granted/sub/deep/er", parents=True, mode=0o700),
    request(2, "chmod", path="~/granted/sub", mode=0o500),
    request(3, "dir_delete", path="~/granted/sub", recursive=True),
    request(4, "dir_delete", path="~/granted", recursive=True),
    request(5, "file_delete", path="~/secret.txt"),
    request(6, "dir_create", path="~/granted/escape/new", parents=True, mode=0o700),
)
seeds["session_cancel_and_env"] = seed(
    request(1, "stdin_read", max=16),
    pack({"t": "cancel", "id": 1}),
    request(2, "env_get", name="HOME"),
    request(3, "browser_open", url="https://fuzz.example/login"),
    pack({"t": "window", "sid": 0, "bytes": 1024}),
    flags=1,
)



def ok(reply, **fields):
    # The id is the target's to set: the answer goes to its next request.
    return pack({"t": "response", "id": 1, "ok": {"k": reply, **fields}})


def error(code):
    return pack({"t": "response", "id": 1, "error": {"code": code, "message": "no"}})


server_seeds = {}
for vector in json.load(open("protocol/tests/vectors.json")):
    if vector["direction"] == "client" and not vector["name"].startswith(("client_hello", "client_resume")):
        server_seeds[vector["name"]] = seed(bytes.fromhex(vector["hex"]))
# The command's requests, in order: line, password, chunk, file read, write,
# exists, metadata, streamed write (open, chunk, commit), list, mkdir -p,
# env, browser, raw mode, key, cooked mode.
answers = [
    ok("line", line="ada"),
    ok("line", line="hunter2"),
    ok("data", bytes=b"typed", eof=False),
    ok("data", bytes=b"notes", eof=True),
    ok("unit"),
    ok("bool", value=True),
    ok("metadata", exists=True, kind="file", size=5, mode=0o644, modified_ms=1700000000123),
    ok("handle", handle=1),
    ok("unit"),
    ok("unit"),
    ok("entries", entries=[{"name": "notes.txt", "kind": "file"}, {"name": "a", "kind": "dir"}]),
    ok("unit"),
    ok("value", value="/home/ada"),
    ok("unit"),
    ok("unit"),
    ok("key", key="q", ctrl=False, alt=False, shift=False),
    ok("unit"),
]
window = pack({"t": "window", "sid": 1, "bytes": 1 << 20})
server_seeds["session_answers_everything"] = seed(*answers, window, window)
server_seeds["session_resumable_acks_and_detaches"] = seed(
    *answers[:4],
    pack({"t": "ack", "seq": 3}),
    pack({"t": "detach"}),
    flags=1,
)
server_seeds["session_denials_and_interrupt"] = seed(
    error("denied"),
    pack({"t": "signal", "signal": "interrupt"}),
    error("not_found"),
    pack({"t": "data", "sid": 0, "bytes": b"piped\n"}),
    pack({"t": "eof", "sid": 0}),
    flags=2,
)

for folder, written in [
    ("fuzz/seeds/client_session", seeds),
    ("fuzz/seeds/server_session", server_seeds),
]:
    os.makedirs(folder, exist_ok=True)
    for name, data in sorted(written.items()):
        with open(os.path.join(folder, name), "wb") as out:
            out.write(data)
    print(f"{len(written)} seeds in {folder}")
