"""How a pipeline sets up tasks of these components (``pipelines/*.py`` use it; so can yours).

* Launcher pods are CPU-only with small explicit requests: the GPUs belong to the PyTorchJobs
  they launch (nodes, GPUs and node pool are the components' own parameters), never to the
  task (no ``set_accelerator_*``, no TaskConfig ``RESOURCES`` passthrough).
* S3 credentials come from a Kubernetes Secret as environment variables (kfp-kubernetes
  ``use_secret_as_env``), never as parameters. ``optional=True``: a missing Secret does not
  leave the pod stuck in CreateContainerConfigError; ``validate`` then fails with a message
  that names the Secret. The name is the ``credentials`` task's output (:func:`s3_secret_of`),
  not the ``s3_secret`` parameter: "" (IRSA) would become ``secretKeyRef.name: ""``, which the
  API server refuses; ``credentials`` turns it into a name no Secret has.
* The run id comes from the pod's label (``use_field_path_as_env``), not from an input: the
  backend resolves the run-id placeholder before computing the cache key, so a task taking it
  as an input would never hit the cache. The Workflow's name comes the same way: a launcher
  and the exit task read the run's Workflow to tell a terminated run from a drained pod
  (``umt.pipeline.run_state``).
* Retries (``set_retry``) for launcher pods lost with their node: the retry adopts the running
  job. kfp's default ``backoff_max_duration`` is 3600 s, and Argo counts it from the first
  attempt's start: no retry after an hour, and a retried attempt is killed at first start +
  1 h (argoproj/argo-workflows#13044). Every retried task gets :data:`RETRY_WINDOW` instead,
  longer than any job may run. (Argo retries ``Failed`` nodes only -- KFP 2.17 compiles no
  ``retryPolicy`` and its IR has no field for one -- so a pod deleted before Argo saw it exit
  is an ``Error`` and not retried: the run fails, the job keeps training, and a rerun adopts
  it; docs/pipelines.md.)
* Launcher pods are annotated not safe to evict for the cluster autoscaler: a scale-down
  would otherwise stop the one pod following a multi-node job.
* Images are fixed when the pipeline is compiled (:func:`with_images`): every task runs the
  immutable ``<repository>/umt-launcher:<version>-<sha>`` (``umt.launch.images``; the
  repository is ``UMT_IMAGE_REPOSITORY`` at compile time), and gets ``UMT_TRAIN_IMAGE``, the
  training image of the same build, in its environment: what a launcher renders its jobs
  with when the ``image`` parameter is "". ``UMT_IMAGE_PULL_SECRETS`` at compile time (comma-
  separated Secret names) become the pods' and the training pods' ``imagePullSecrets``.
"""

from kfp import kubernetes

from umt.launch.images import (
    IMAGE_ENV,
    LAUNCHER_IMAGE,
    PULL_SECRETS_ENV,
    TRAIN_IMAGE,
    default_image,
    pull_secrets,
)
from umt.launch.request import DEFAULT_ACTIVE_DEADLINE
from umt.pipeline.run_state import WORKFLOW_ENV, WORKFLOW_FIELD

S3_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
           "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
           "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION",
           "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}
RUN_ID_ENV, RUN_ID_FIELD = "KFP_RUN_ID", "metadata.labels['pipeline/runid']"
# How long after a task's first start Argo may still retry it (and when it kills a retried
# attempt): twice a job's default deadline, so a retry can follow a job to its end.
RETRY_WINDOW = f"{2 * DEFAULT_ACTIVE_DEADLINE}s"
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"


def with_run_id(task):
    kubernetes.use_field_path_as_env(task, RUN_ID_ENV, RUN_ID_FIELD)
    kubernetes.use_field_path_as_env(task, WORKFLOW_ENV, WORKFLOW_FIELD)
    return with_images(task)


def with_images(task):
    """The launcher image and the training image its jobs get, both resolved now."""
    task.set_container_image(default_image(LAUNCHER_IMAGE))
    task.set_env_variable(IMAGE_ENV[TRAIN_IMAGE], default_image(TRAIN_IMAGE))
    secrets = pull_secrets()
    if secrets:
        kubernetes.set_image_pull_secrets(task, secrets)
        task.set_env_variable(PULL_SECRETS_ENV, ",".join(secrets))
    return task


def s3_secret_of(task):
    """The Secret name every other task of the pipeline references: the output of a
    ``credentials`` task (small, cached, no credentials of its own)."""
    task.set_display_name("S3 credentials: which Secret")
    task.set_cpu_request("100m")
    task.set_memory_request("256Mi")
    task.set_memory_limit("1Gi")
    with_run_id(task)
    return task.output


def cpu_task(task, display_name: str, *, s3_secret, cpu: str = "500m", memory: str = "1Gi",
             memory_limit: str = "4Gi", retries: int = 0):
    """A CPU-only task with the S3 Secret and the run id in its environment."""
    task.set_display_name(display_name)
    task.set_cpu_request(cpu)
    task.set_memory_request(memory)
    task.set_memory_limit(memory_limit)
    kubernetes.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env=S3_KEYS,
                                 optional=True)
    with_run_id(task)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0,
                       backoff_max_duration=RETRY_WINDOW)
    return task


def launcher_task(task, display_name: str, *, s3_secret, retries: int = 2):
    """A task that launches and follows a job: 0.5 CPU, 1-4 GiB, retried twice, not evicted
    by the autoscaler."""
    kubernetes.add_pod_annotation(task, SAFE_TO_EVICT, "false")
    return cpu_task(task, display_name, s3_secret=s3_secret, retries=retries)


def exit_task(task, display_name: str = "Clean up unfinished jobs"):
    """The exit handler's task: small, never cached (a cached exit task would not run), with
    the run id (it deletes the run's jobs by their label)."""
    task.set_display_name(display_name)
    task.set_caching_options(False)
    task.set_cpu_request("100m")
    task.set_memory_request("256Mi")
    task.set_memory_limit("1Gi")
    return with_run_id(task)
