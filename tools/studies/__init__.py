"""Study code: what the tools use to judge the library, and nothing the library itself runs.

- :mod:`studies.oracle`: what removing channels really does to the loss (the oracle study).
- :mod:`studies.scoring`: several criteria fed from one backward pass per minibatch.
- :mod:`studies.no_training`: the library's iterative schedule with a hook that trains nothing,
  BatchNorm re-estimated before each step (the oracle study's compounding removals).
- :mod:`studies.latency`: how well the latency table interpolates and recalibrates, and the two
  selection methods side by side.

Tools import it with ``tools/`` on ``sys.path`` (``from studies.oracle import ...``), as they import
``_bench_common``. ``import taylorprune`` never loads it, and the library never imports from it
(``tests/test_package.py``); its tests are ``tests/test_studies_*.py``.
"""
