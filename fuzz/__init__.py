"""Fuzzing harnesses for what a hostile child controls: the frame decoder and path resolution.

Run both, a bounded number of iterations each, with one command from the repo root::

    .venv/bin/python -m fuzz --runs 100000          # or: .venv/bin/python fuzz/run.py --runs 100000
    .venv/bin/python -m fuzz --harness paths --runs 0 --max-time 600   # one harness, ten minutes

With atheris installed (the ``test`` extra) each harness runs under
libFuzzer, coverage-guided over the instrumented ``privsep`` package; a
failing input is written to ``--artifacts`` (default: a temporary
directory, named in the output). Without atheris, or with ``--plain``, the
same harness runs as a seeded random-mutation loop over its seed inputs, so
the harnesses work everywhere. CI runs both for a few seconds
(``tests/adversarial/test_fuzz_smoke.py``).
"""
