"""Launch training stages as Kubeflow PyTorchJobs, on a cluster or on this machine."""
