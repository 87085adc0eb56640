"""Run one harness: under atheris (libFuzzer) when it is installed, else as a seeded mutation loop.

A harness is a function of one ``bytes`` argument that raises on a broken
property. Both modes feed it the harness's seed inputs first, then
mutations of them; atheris adds coverage guidance over the instrumented
``privsep`` package (see :func:`instrumented`), the plain loop does not.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Harness = Callable[[bytes], None]

_scratch: Path | None = None


def scratch_dir() -> Path:
    """A directory for the harness's own files (``--scratch``; the runner removes it after a pass).

    libFuzzer ends the process without running ``atexit`` handlers, so a
    harness cannot clean up after itself: it keeps its files here instead.
    """
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="privsep-fuzz-scratch-"))
    _scratch.mkdir(parents=True, exist_ok=True)
    return _scratch


def atheris_module() -> Any | None:
    """The atheris module, or None when it is not installed (the harness then runs plain)."""
    try:
        return importlib.import_module("atheris")
    except ImportError:
        return None


def wants_plain(argv: Sequence[str] | None = None) -> bool:
    """True when this run must not use atheris: ``--plain`` given, or atheris missing."""
    args = sys.argv[1:] if argv is None else argv
    return "--plain" in args or atheris_module() is None


def instrumented(plain: bool) -> contextlib.AbstractContextManager[Any]:
    """Wrap the harness's ``privsep`` imports: atheris instruments them for coverage guidance."""
    atheris = None if plain else atheris_module()
    if atheris is None:
        return contextlib.nullcontext()
    return atheris.instrument_imports(include=["privsep"])  # type: ignore[no-any-return]


def _parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m fuzz.{name}", description=f"fuzz harness '{name}'")
    parser.add_argument(
        "--runs", type=int, default=10_000, help="inputs to try; 0: no bound (see --max-time)"
    )
    parser.add_argument("--max-time", type=int, default=0, help="stop after this many seconds (0: no bound)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0: a fresh one)")
    parser.add_argument("--max-len", type=int, default=4096, help="longest input, in bytes")
    parser.add_argument(
        "--plain", action="store_true", help="a plain random-mutation loop, even with atheris"
    )
    parser.add_argument("--artifacts", help="directory for failing inputs (default: a new temporary one)")
    parser.add_argument("--corpus", help="working corpus directory (default: a new temporary one)")
    parser.add_argument(
        "--scratch", help="directory for the harness's own files (default: a new temporary one)"
    )
    return parser


def run(
    name: str,
    harness: Harness,
    seeds: Sequence[bytes],
    tokens: Sequence[bytes] = (),
    argv: Sequence[str] | None = None,
) -> int:
    """Fuzz ``harness``; returns 0 when every input passed (atheris exits the process itself)."""
    global _scratch
    args, extra = _parser(name).parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.scratch:
        _scratch = Path(args.scratch)
    artifacts = Path(args.artifacts or tempfile.mkdtemp(prefix=f"privsep-fuzz-{name}-"))
    artifacts.mkdir(parents=True, exist_ok=True)
    seed = args.seed or int.from_bytes(os.urandom(4), "little") or 1
    atheris = None if args.plain else atheris_module()
    if atheris is None:
        return _plain(name, harness, seeds, tokens, args=args, artifacts=artifacts, seed=seed)
    corpus = Path(args.corpus or tempfile.mkdtemp(prefix=f"privsep-fuzz-{name}-corpus-"))
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(data)
    flags = [
        f"-runs={args.runs if args.runs > 0 else -1}",
        f"-seed={seed}",
        f"-max_len={args.max_len}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    if args.max_time:
        flags.append(f"-max_total_time={args.max_time}")
    if tokens:
        dictionary = scratch_dir() / "tokens.dict"
        dictionary.write_text("".join(f'"{_escape(t)}"\n' for t in tokens))
        flags.append(f"-dict={dictionary}")
    print(f"{name}: atheris (libFuzzer), seed {seed}; failing inputs go to {artifacts}", flush=True)
    atheris.Setup([sys.argv[0], *flags, *extra, str(corpus)], harness)
    atheris.Fuzz()  # runs until done, then exits the process
    return 0


def _escape(token: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}" for b in token)


_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, ord("/"), ord("."), ord('"'), ord("\\"), ord("{"), ord("["), ord(":")]


def mutate(
    rng: random.Random, data: bytes, pool: Sequence[bytes], tokens: Sequence[bytes], max_len: int
) -> bytes:
    """A few random edits of ``data``: flips, inserts, deletes, splices, dictionary tokens."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        kind = rng.randrange(7)
        at = rng.randint(0, len(buf))
        if kind == 0 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 2 and buf:
            del buf[at : at + rng.randint(1, 16)]
        elif kind == 3 and buf:
            buf[min(at, len(buf) - 1)] = rng.choice(_INTERESTING)
        elif kind == 4 and pool:
            other = rng.choice(pool)
            cut = rng.randint(0, len(other))
            buf[at:] = other[cut:]
        elif kind == 5 and buf:
            start = rng.randint(0, len(buf) - 1)
            buf[at:at] = buf[start : start + rng.randint(1, 32)] * rng.randint(1, 4)
        elif tokens:
            buf[at:at] = rng.choice(tokens)
    return bytes(buf[:max_len])


def _plain(
    name: str,
    harness: Harness,
    seeds: Sequence[bytes],
    tokens: Sequence[bytes],
    *,
    args: argparse.Namespace,
    artifacts: Path,
    seed: int,
) -> int:
    rng = random.Random(seed)  # noqa: S311 - reproducible inputs, not secrets
    print(f"{name}: plain random mutation (no atheris), seed {seed}", flush=True)
    started = time.monotonic()
    runs = 0
    inputs: list[bytes] = list(seeds)
    while args.runs <= 0 or runs < args.runs:
        if args.max_time and time.monotonic() - started > args.max_time:
            break
        if inputs:
            data = inputs.pop(0)
        elif rng.random() < 0.1:
            data = rng.randbytes(rng.randint(0, min(args.max_len, 512)))
        else:
            data = mutate(rng, rng.choice(seeds) if seeds else b"", seeds, tokens, args.max_len)
        try:
            harness(data)
        except BaseException:
            crash = artifacts / f"crash-{runs}"
            crash.write_bytes(data)
            print(f"{name}: FAILED on input {data!r} (written to {crash}; replay: --seed {seed})", flush=True)
            raise
        runs += 1
    print(f"{name}: Done {runs} runs in {time.monotonic() - started:.1f} s", flush=True)
    return 0
