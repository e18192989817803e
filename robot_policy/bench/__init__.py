"""Every benchmark: one runner (:mod:`.runner`), one writer of ``bench_out/`` and BENCHMARKS.md (:mod:`.report`)."""
