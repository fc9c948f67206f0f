"""What every component shares: the image it runs in and how it is built.

The base image is the project's launcher image (``images/launcher.Dockerfile``: the umt package
with kfp, no torch) of this package's release, ``<repository>/umt-launcher:<version>``
(``UMT_IMAGE_REPOSITORY`` at compile time to use your registry): what the reusable
``component.yaml`` files name. A pipeline built with ``components/tasks.py`` pins every task
to the immutable ``<version>-<sha>`` image instead (``umt.launch.images``).
``install_kfp_package=False``: kfp is in the image already; otherwise every task would ``pip
install kfp`` at start (on a cluster: a network dependency per task; with kfp.local: into the
user's own interpreter). The training image does not need kfp: components only launch jobs
into it.

The parameters most steps share (the job's nodes, GPUs, node pool, image, ...) are described
once, in ``SHARED_DOCS``; ``component`` adds the description of each such parameter a step's
docstring leaves out, so the UI shows the same text everywhere, and refuses a step with an
undescribed parameter.
"""

from __future__ import annotations

import inspect
import re

from kfp import dsl

from umt.launch.images import LAUNCHER_IMAGE, release_image

BASE_IMAGE = release_image(LAUNCHER_IMAGE)


# Inputs (Args) and outputs (Returns) of the launcher steps, described once.
SHARED_DOCS = {
    "output_prefix": "Folder or s3:// prefix the job writes under.",
    "model_size": "tiny, base or large (the stage's preset).",
    "steps": "Optimizer steps (0 = the preset's schedule: its epochs over the data set at the job's global batch, or its steps).",
    "batch_size": "Batch size per GPU (0 = the preset's).",
    "num_frames": "Frames per clip (0 = the preset's).",
    "overrides": "Extra config overrides, key=value.",
    "nodes": "Nodes (pods) of the job.",
    "gpus_per_node": "GPUs per node (0 = a CPU job).",
    "node_pool": "Node pool of the training pods, e.g. gke-a100.",
    "image": 'Training image ("" = the umt-train image of this build).',
    "s3_secret": 'Kubernetes Secret with the S3 credentials ("" = none).',
    "job_backend": "Kind of training job: cluster (the kind the cluster serves, TrainJob "
                   "first), trainjob (Kubeflow Trainer v2) or pytorchjob (Training Operator "
                   "v1); locally, the local executor of that kind.",
    "kueue_queue": 'Kueue LocalQueue of the jobs ("" = none): they wait, suspended, until '
                   'Kueue admits them.',
    "priority_class": 'PriorityClass of the training pods ("" = the cluster default).',
    "job_namespace": 'Namespace of the jobs ("" = the pipeline\'s own; the runner needs the '
                     'umt-launcher Role there).',
    "tasks": 'The run\'s downstream tasks: this step runs when its task is listed ("*" = any).',
    "task_data": 'dataset.json per task and split, {"<task>_train"|"<task>_eval": URI} '
                 '(absent = the pipeline\'s dataset).',
    "checkpoint_fingerprints": "Content fingerprints of the existing checkpoints, by stage "
                               "(validate's output: a checkpoint replaced in place is new).",
    "task_data_fingerprints": "Content fingerprints of the task_data files, by key (validate's "
                              "output: a file edited in place is new data).",
    "model": "model.json: checkpoint URI, architecture, frames, resolution, step, config hash.",
    "metrics": "final_loss, steps, clips_per_s, wall_hours, gpu_hours.",
    "job": "The rendered PyTorchJob YAML.",
}
_ENTRY = re.compile(r"^ {4}(\w+): ")  # an entry of a section, after inspect.cleandoc


def with_shared_docs(func) -> str:
    """``func``'s Google-style docstring with the ``SHARED_DOCS`` entries of the parameters it
    does not describe: inputs at the end of ``Args:``, outputs (``Output[...]``) at the end of
    ``Returns:``. Raises ``TypeError`` naming a parameter described nowhere."""
    lines = inspect.cleandoc(func.__doc__ or "").split("\n")
    described = {m.group(1) for line in lines if (m := _ENTRY.match(line))}
    missing: dict[str, list[str]] = {"Args:": [], "Returns:": []}
    for name, param in inspect.signature(func).parameters.items():
        if name in described:
            continue
        if name not in SHARED_DOCS:
            raise TypeError(f"component {func.__name__}: parameter {name!r} has no description "
                            "in its docstring or in components.base.SHARED_DOCS")
        section = "Returns:" if "Output" in str(param.annotation) else "Args:"
        missing[section].append(f"    {name}: {SHARED_DOCS[name]}")
    for section, entries in missing.items():
        if not entries:
            continue
        if section not in lines:
            lines += ["", section]
        at = lines.index(section) + 1
        while at < len(lines) and lines[at].startswith("    "):  # the section's entries
            at += 1
        lines[at:at] = entries
    return "\n".join(lines) + "\n"


def component(func):
    """``@dsl.component`` with the project's image, no kfp install, and the shared parameter
    descriptions filled in."""
    func.__doc__ = with_shared_docs(func)
    return dsl.component(func, base_image=BASE_IMAGE, install_kfp_package=False)
