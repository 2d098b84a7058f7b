"""What ``einscade explain`` and ``einscade show --format json`` report, and how it is drawn.

- ``summary``: plain-data facts of a cascade (statements, pass count, dense work) for JSON;
- ``layouts``: the block layout chosen for a cascade's mask and the candidates it beat;
- ``pictures``: block map and mask pictures (matplotlib, headless);
- ``dataflow``: the cascade as a dataflow graph (graphviz ``dot`` if installed, else
  matplotlib via networkx);
- ``html``: the ``index.html`` that ties a report folder together.
"""
