"""Launch training stages as Kubeflow PyTorchJobs, on a cluster or on this machine.

    umt job render stage1 --config b16 --nodes 4 --gpus-per-node 8 --node-pool gke-a100 \\
        | kubectl apply -f -

``run_training_job`` is the plain-Python entry point (KFP components call it; it returns the
stage's summary); ``delete_run_jobs`` is the pipeline's exit task; ``build_pytorchjob`` makes
the typed job; ``PyTorchJobBackend`` (cluster) and ``LocalBackend`` (processes here) implement
the ``JobBackend`` protocol.
"""

from umt.launch.backend import (
    JobBackend,
    JobCancelledError,
    JobFailedError,
    JobStartError,
    Submission,
    SummaryError,
)
from umt.launch.cluster import PyTorchJobBackend
from umt.launch.gc import delete_run_jobs
from umt.launch.local import LocalBackend, LocalExecutor
from umt.launch.node_pools import NODE_POOLS, NodePool, get_node_pool
from umt.launch.pytorchjob import S3Credentials, TrainingJob, build_pytorchjob, job_name
from umt.launch.run import JobResult, make_backend, read_summary, run_training_job
from umt.launch.serialize import from_dict, from_yaml, to_dict, to_yaml
from umt.launch.status import JobStatus
from umt.launch.validate import InvalidJobError, pytorchjob_errors, validate_pytorchjob
from umt.launch.values import InvalidOptionError

__all__ = [
    "NODE_POOLS",
    "InvalidJobError",
    "InvalidOptionError",
    "JobBackend",
    "JobCancelledError",
    "JobFailedError",
    "JobResult",
    "JobStartError",
    "JobStatus",
    "LocalBackend",
    "LocalExecutor",
    "NodePool",
    "PyTorchJobBackend",
    "S3Credentials",
    "Submission",
    "SummaryError",
    "TrainingJob",
    "build_pytorchjob",
    "delete_run_jobs",
    "from_dict",
    "from_yaml",
    "get_node_pool",
    "job_name",
    "make_backend",
    "pytorchjob_errors",
    "read_summary",
    "run_training_job",
    "to_dict",
    "to_yaml",
    "validate_pytorchjob",
]
