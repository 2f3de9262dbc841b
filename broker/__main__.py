"""``python -m broker``: the same as the ``passerelle`` command."""

from broker.cli import main

main()
