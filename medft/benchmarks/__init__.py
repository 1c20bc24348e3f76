"""The benchmarks behind ``medft bench``: one module per benchmark, and their registry.

They are tools, not library code: ``import medft`` does not import them, and no medft
module does except :mod:`medft.bench`, which imports :mod:`.registry` when a run starts.
They ship in the package so that ``medft bench`` works from an installed wheel.

- :mod:`.registry`: ``BENCHMARKS``, what ``medft bench`` runs (name -> ``fn(quick)``);
- one module per benchmark (:mod:`.fit_throughput`, :mod:`.decode`, :mod:`.cache`, ...),
  each also runnable alone: ``python -m medft.benchmarks.<name> --help``;
- :mod:`.scale` (``medft bench scale``), :mod:`.gpu`, :mod:`.demo_load` and
  :mod:`.pretrained_vs_scratch` run alone only.

The shared machinery (interleaved timer, result rows, table, JSON) is :mod:`medft.bench`.
"""
