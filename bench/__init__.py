"""privsep's benchmarks: ``.venv/bin/python -m bench [--quick] [--rounds N] [--out PATH]``.

Every number is measured in the same run as the floor or the peer it is
compared with, and reported as a ratio: absolute times on a shared machine
are noise. See ``bench/run.py`` for what each section measures.
"""
