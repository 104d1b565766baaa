"""A plugin file that fails while being imported: the registry records it and loads the others."""

raise ImportError("raises_at_import: a dependency this plugin needs is missing")

ESTIMATORS: dict = {}  # never reached
