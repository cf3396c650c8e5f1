"""wattscope's version: the one home the package metadata (pyproject's dynamic version),
``wattscope.__version__`` and every recording's meta read."""

__version__ = "0.2.0.dev0"
