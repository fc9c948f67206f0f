"""Unmasked Teacher (UMT): training-efficient video foundation models.

The library every container, component and job of the project runs. It never imports kfp.
"""

__version__ = "0.1.0"
