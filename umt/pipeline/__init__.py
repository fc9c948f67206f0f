"""Kubeflow Pipelines support: what the components call, the local runner and submission.

    umt run pipelines/full.py --local [key=value ...]      # the whole DAG on this machine
    umt submit pipelines/full.py --endpoint URL [key=value ...]

This is the one package of ``umt`` that may use kfp, and only lazily, inside the functions that
compile, run or submit pipelines (``umt.pipeline.local``, ``umt.pipeline.submit``,
``umt.pipeline.loader``). ``plan``, ``steps`` and ``validate`` (the component bodies' library)
never import it: the training image and every training process work without kfp installed.
"""
