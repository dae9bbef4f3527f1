"""``python -m cnl`` and ``torchrun -m cnl``: the ``cnl`` command."""

from cnl.cli import run

run()
