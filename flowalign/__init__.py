"""flowalign: align flow-matching text-to-image models (SD3 / SD3.5 / Flux) with reward models.

Importing the package is cheap; heavy dependencies are imported by the functions that need them.
"""

__version__ = "0.1.0"
