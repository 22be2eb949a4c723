"""Launch the web demo: ``python demo/app.py CHECKPOINT [CLASSIFIER]``.

The page itself is built by ``audiomamba.webdemo.build_demo`` (inside the package, so that the
installed ``audiomamba demo`` command has it too); this script only loads and launches.
"""
import sys

from audiomamba.webdemo import build_demo, load_models

if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__.split("\n")[0])
    build_demo(load_models(*sys.argv[1:])).launch(show_error=True)
