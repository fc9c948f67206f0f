"""``credentials``: the Secret the pipeline's own pods read their S3 credentials from."""

from components.base import component


@component
def credentials(s3_secret: str = "umt-s3") -> str:
    """Names the Secret the pipeline's pods take their S3 credentials from (optionally).

    The pods reference the Secret by a name KFP resolves at run time, and an empty name makes
    pods the API server refuses; so "" (IRSA / workload identity) becomes a name no Secret has,
    whose optional reference sets nothing: the pods then use their ServiceAccount's identity.
    The training jobs take s3_secret itself ("" = no Secret reference at all).

    Args:
        s3_secret: Kubernetes Secret with the S3 credentials ("" = IRSA / workload identity).

    Returns:
        Output: The Secret name the pods reference: s3_secret, or a name no Secret has.
    """
    from umt.pipeline.validate import secret_reference

    return secret_reference(s3_secret)
