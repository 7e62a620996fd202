"""Getting model artifacts onto devices: a content-addressed HTTP server and a resuming client.

Example:
    >>> from workbench.deploy import ArtifactServer, fetch
    >>> with ArtifactServer("/tmp/wb-artifacts") as server:      # doctest: +SKIP
    ...     sha = server.add("model.onnx")
    ...     fetch(server.url(sha), sha, "/tmp/copy.onnx")
"""

from workbench.protocol.artifacts import ArtifactError, ArtifactServer, fetch, sha256_file

__all__ = ["ArtifactError", "ArtifactServer", "fetch", "sha256_file"]

# Deployments (issue 4): signed packages, A/B installs on the agents, rollouts.
from workbench.deploy._gates import Gate, MetricSource, ProbeMetrics, gate
from workbench.deploy._rollout import Rollout, RolloutReport, deploy, history, prepare_package
from workbench.deploy._strategies import AllAtOnce, Canary, Outcome, Shadow, Strategy, Wave, WaveResult, Waves
from workbench.errors import (
    DeployConflictError,
    DeployError,
    HealthCheckError,
    PackageError,
    RolloutAbortedError,
    SignatureError,
)
from workbench.protocol.keys import init_keys, load_signing_key, load_trusted_keys
from workbench.protocol.package import Package, build_package, load_package, sign_package, verify_package

__all__ += [
    "AllAtOnce", "Canary", "DeployConflictError", "DeployError", "Gate", "HealthCheckError", "MetricSource",
    "Outcome", "Package", "PackageError", "ProbeMetrics", "Rollout", "RolloutAbortedError", "RolloutReport",
    "Shadow", "SignatureError", "Strategy", "Wave", "WaveResult", "Waves", "build_package", "deploy", "gate", "history",
    "init_keys", "load_package",
    "load_signing_key", "load_trusted_keys", "prepare_package", "sign_package", "verify_package",
]
