"""A plugin file without an ``ESTIMATORS`` dict: refused with a message naming the file."""

estimators = {}  # wrong name: the registry looks for ESTIMATORS
