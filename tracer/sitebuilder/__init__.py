"""The documentation site builder: walkthroughs/*.md -> MkDocs docs dir -> static site.

It reads the walkthroughs, the hop catalog and trace files; it never imports engine internals
to render a page (our engine runs only inside lab and trace recipes, through its public API).
"""
from tracer.walkthroughs.errors import SiteBuildError

__all__ = ["SiteBuildError"]
