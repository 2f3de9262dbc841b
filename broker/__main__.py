"""``python -m broker``: the same as the ``passerelle`` command."""

from broker.cli import main

# Guarded: the intake's process pool (forkserver) imports this module in its processes.
if __name__ == "__main__":
    main()
