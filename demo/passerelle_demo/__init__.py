"""Passerelle's simulator: synthetic patients, capture subscribers, the demo, the loopback stack.

A distribution of its own (``passerelle-demo``, the broker's ``demo`` extra) so that the broker
package ships no simulator: ``broker`` never imports ``passerelle_demo``; this package imports
the broker.
"""

__all__: list[str] = []
