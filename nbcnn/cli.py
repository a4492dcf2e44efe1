"""The console commands nbcnn-train, nbcnn-predict and nbcnn-bench (pyproject's [project.scripts]).

Each runs its script in the repository's scripts/ folder exactly as `python scripts/<name>.py ARGS`
would, so the scripts stay the one place the programs are written. They ship with a source
checkout, so the commands need an editable install (pip install -e .).
"""

import os
import runpy
import sys

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")


def run_script(name, argv=None):
    """Run scripts/<name>.py as __main__ with the arguments `argv` (default: this command's)."""
    path = os.path.join(SCRIPTS, f"{name}.py")
    if not os.path.isfile(path):
        sys.exit(f"error: {path} not found: the nbcnn commands run the scripts of a source checkout; "
                 "install nbcnn from one with pip install -e .")
    sys.argv = [path] + list(sys.argv[1:] if argv is None else argv)
    runpy.run_path(path, run_name="__main__")  # the script ends with sys.exit(main())


def train():
    run_script("train_alexnet")


def predict():
    run_script("predict")


def bench():
    run_script("bench")
