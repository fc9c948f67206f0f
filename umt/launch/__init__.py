"""Launch training stages as jobs, on a cluster or on this machine.

    umt job render stage1 --config b16 --nodes 4 --gpus-per-node 8 --node-pool gke-a100 \\
        | kubectl apply -f -

``run_training_job`` is the plain-Python entry point (KFP components call it; it returns the
stage's summary); ``delete_run_jobs`` is the pipeline's exit task. A :class:`TrainingJob` is the
backend-neutral request (:mod:`umt.launch.request`); a backend (:mod:`umt.launch.backend`, one
module each in :mod:`umt.launch.backends`: ``pytorchjob`` on a cluster, ``local`` as processes
here) renders it, runs it and reports on it. ``render_job`` / ``render_job_yaml`` render with
the backend of a name (``cluster``: the cluster's default), ``make_backend`` makes one.
"""

from umt.launch.backend import (
    Backend,
    JobCancelledError,
    JobDetachedError,
    JobFailedError,
    JobStartError,
    RenderedJob,
    Submission,
    SummaryError,
    backend_class,
    backend_names,
    make_backend,
    render_job,
    render_job_yaml,
)
from umt.launch.crd import InvalidJobError
from umt.launch.gc import delete_run_jobs
from umt.launch.node_pools import NODE_POOLS, NodePool, get_node_pool
from umt.launch.request import S3Credentials, TrainingJob, job_name
from umt.launch.run import JobResult, read_summary, run_training_job
from umt.launch.serialize import from_dict, from_yaml, to_dict, to_yaml
from umt.launch.status import JobStatus
from umt.launch.values import InvalidOptionError

__all__ = [
    "NODE_POOLS",
    "Backend",
    "InvalidJobError",
    "InvalidOptionError",
    "JobCancelledError",
    "JobDetachedError",
    "JobFailedError",
    "JobResult",
    "JobStartError",
    "JobStatus",
    "NodePool",
    "RenderedJob",
    "S3Credentials",
    "Submission",
    "SummaryError",
    "TrainingJob",
    "backend_class",
    "backend_names",
    "delete_run_jobs",
    "from_dict",
    "from_yaml",
    "get_node_pool",
    "job_name",
    "make_backend",
    "read_summary",
    "render_job",
    "render_job_yaml",
    "run_training_job",
    "to_dict",
    "to_yaml",
]
