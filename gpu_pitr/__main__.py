"""``python -m gpu_pitr``: the ``gpu-pitr`` command line."""

from gpu_pitr.cli import run

if __name__ == "__main__":
    run()
