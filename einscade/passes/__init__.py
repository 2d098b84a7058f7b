"""Rewrite passes, one per module. Importing this package registers each pass by its name.

Pipeline spec strings (``"dce,tile{p=128}"``) find passes through ``base.REGISTRY``, so every
pass module must be imported here: add one line per module to the list below.
"""

from einscade.passes import (  # noqa: F401  (imported for their @register side effect)
    associate,
    chunk_linear,
    dce,
    defer_div,
    online_softmax,
    tile,
)
