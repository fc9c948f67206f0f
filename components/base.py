"""What every component shares: the image it runs in and how it is built.

The base image is the project's launcher image (``images/launcher.Dockerfile``: the umt package
with kfp, CPU PyTorch), tagged with this package's version like every umt image
(``UMT_IMAGE_REPOSITORY`` at compile time to use your registry). ``install_kfp_package=False``:
kfp is in the image already; otherwise every task would ``pip install kfp`` at start (on a
cluster: a network dependency per task; with kfp.local: into the user's own interpreter).
The training image does not need kfp: components only launch PyTorchJobs into it.
"""

from __future__ import annotations

from kfp import dsl

from umt.launch.images import LAUNCHER_IMAGE, default_image

BASE_IMAGE = default_image(LAUNCHER_IMAGE)


def component(func):
    """``@dsl.component`` with the project's image and no kfp install."""
    return dsl.component(func, base_image=BASE_IMAGE, install_kfp_package=False)
