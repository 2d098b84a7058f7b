"""torch.fx capture: the ``torch.compile`` backend ``"einscade"`` (see docs/torch-compile.md)."""

from einscade.frontends.fx.backend import SiteRecord, capture, einscade_backend, record_sites

__all__ = ["SiteRecord", "capture", "einscade_backend", "record_sites"]
