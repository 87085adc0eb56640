"""Real, unmodified programs under ``privsep run``, judged side by side with bubblewrap."""
