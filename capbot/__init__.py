"""capbot: see what your ISP does to your capped or throttled line."""

__version__ = "0.1.0"
