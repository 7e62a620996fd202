"""Getting model artifacts onto devices: a content-addressed HTTP server and a resuming client.

Example:
    >>> from workbench.deploy import ArtifactServer, fetch
    >>> with ArtifactServer("/tmp/wb-artifacts") as server:      # doctest: +SKIP
    ...     sha = server.add("model.onnx")
    ...     fetch(server.url(sha), sha, "/tmp/copy.onnx")
"""

from workbench.deploy.artifacts import ArtifactError, ArtifactServer, fetch, sha256_file

__all__ = ["ArtifactError", "ArtifactServer", "fetch", "sha256_file"]
