"""The main module of one benchmark sample: ``python _main.py SPEC.json MODULE:NAME [LIB]``.

Under spawn every worker re-imports its parent's main module (as ``__mp_main__``), and
with it everything that module imports: that is part of each worker's start-up. So this
module imports what a user's script starts with, the library under test
(``from MODULE import NAME``), and nothing else at the top. The harness (``_child``) is
imported only in the measuring process itself: its own imports (statistics, dataclasses,
typing...) would otherwise be part of every library's worker start-up alike, and hide
what a library's own import costs its workers.

With two more arguments, the library's key and the case's name, the sample is one of the
startup cases (``_startup.EARLY_CASES``): it is measured first, before the harness is
imported (``_startup``), and handed to the harness to report.
"""

import importlib
import sys

if len(sys.argv) > 2:  # workers see the same argv (spawn hands it over)
    _module, _, _name = sys.argv[2].partition(":")
    getattr(importlib.import_module(_module), _name)

if __name__ == "__main__":
    early: dict[str, float] | BaseException | None = None
    if len(sys.argv) > 4:
        try:
            from _startup import measure_early

            early = measure_early(sys.argv[3], sys.argv[4])
        except BaseException as exc:  # reported by the harness, as any failure
            early = exc

    from _child import main

    sys.exit(main(early))
