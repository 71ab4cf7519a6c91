"""The lecture as notebooks: Markdown sources (jupytext), executed and
rendered to HTML by ``python -m notebooks.build --out DIR``."""
