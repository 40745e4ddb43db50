"""``python -m facemtl.cli``: the ``facemtl`` command."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
