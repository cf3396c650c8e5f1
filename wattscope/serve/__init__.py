"""Serving load: the driver, its engines and the serve-bench session."""
