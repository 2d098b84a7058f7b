"""A native C++ CPU kernel for the torch target's block-sparse attention.

``attend.cpp`` runs a plan's tile groups (gather, register-blocked GEMMs, online softmax,
all in cache, on its own threads); :mod:`.library` builds it for this machine's CPU and
loads it; :mod:`.attend` passes a plan to it. ``python -m einscade.codegen.native`` builds
it ahead of time (``make venv`` does).
"""
