"""``python -m gpu_pitr``: the ``gpu-pitr`` command line."""

import sys

from gpu_pitr.cli import main

if __name__ == "__main__":
    sys.exit(main())
