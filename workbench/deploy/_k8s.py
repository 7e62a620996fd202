"""Kubernetes / KubeEdge manifests for users who run the agent under K3s or KubeEdge.

The agent runs as a DaemonSet on the nodes labelled with the package's target profile; its
data directory (where the A/B slots live) is a hostPath volume, so a pod restart keeps the
verified model; the workbench's public key is mounted from a ConfigMap as the trusted key;
the model itself arrives the usual way, through the retained desired state and the artifact
server, so the manifests do not change per model version.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from workbench.profiles import get_profile
from workbench.protocol.keys import load_signing_key
from workbench.protocol.package import load_package

PROFILE_LABEL = "workbench.io/profile"
HEALTH_PORT = 8081  # the agent's /healthz, probed by the kubelet
AGENT_IMAGE = "edge-workbench-agent"  # what the repository's Containerfile builds (README, "On a real device")
AGENT_UID = 10001  # the Containerfile's non-root user


def default_image() -> str:
    """The agent image of this workbench release, as the Containerfile is tagged: ``edge-workbench-agent:VERSION``.

    Example:
        >>> default_image().startswith("edge-workbench-agent:")
        True
    """
    from workbench import __version__

    return f"{AGENT_IMAGE}:{__version__}"


def manifests(package_dir: str | os.PathLike[str], *, broker: str, profile: str | None = None,
              image: str | None = None, namespace: str = "workbench",
              keys_dir: str | os.PathLike[str] | None = None, kubeedge: bool = False) -> dict[str, dict[str, Any]]:
    """The manifests as ``{file name: object}``.

    Example:
        >>> sorted(manifests("out/digits", broker="mqtt://gw:1883"))    # doctest: +SKIP
        ['configmap.yaml', 'daemonset.yaml', 'namespace.yaml']
    """
    package = load_package(package_dir)
    target = profile or package.manifest.get("target") or "generic-arm64"
    spec = get_profile(str(target))
    public_key = load_signing_key(keys_dir).public_file.read_text()
    labels = {"app.kubernetes.io/name": "workbench-agent", PROFILE_LABEL: spec.name}
    node_selector = {PROFILE_LABEL: spec.name}
    if kubeedge:
        node_selector["node-role.kubernetes.io/edge"] = ""
    memory_mb = spec.memory_mb
    container = {
        "name": "agent",
        "image": image or default_image(),
        "args": ["agent", "--device-id", "$(NODE_NAME)", "--broker", broker, "--profile", spec.name,
                 "--data-dir", "/var/lib/workbench", "--trusted-keys", "/etc/workbench/trusted_keys",
                 "--health-port", str(HEALTH_PORT), "--health-host", "0.0.0.0"],  # the kubelet probes the pod's IP
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "ports": [{"name": "health", "containerPort": HEALTH_PORT}],
        "resources": {"limits": {"cpu": str(spec.cores), "memory": f"{memory_mb}Mi"},
                      "requests": {"cpu": "250m", "memory": f"{min(256, memory_mb)}Mi"}},
        # 200 only while the agent is connected and serves a verified model (or needs none).
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"},
                          "initialDelaySeconds": 30, "periodSeconds": 15, "failureThreshold": 4},
        "securityContext": {"runAsNonRoot": True, "runAsUser": AGENT_UID, "runAsGroup": AGENT_UID,
                            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/workbench"},
                         {"name": "trusted-keys", "mountPath": "/etc/workbench/trusted_keys", "readOnly": True}],
    }
    return {
        "namespace.yaml": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        "configmap.yaml": {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "workbench-trusted-keys", "namespace": namespace},
            "data": {"workbench.pub": public_key},
        },
        "daemonset.yaml": {
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": f"workbench-agent-{spec.name}", "namespace": namespace, "labels": labels,
                         "annotations": {"workbench.io/package": package.name,
                                         "workbench.io/package-version": package.version,
                                         "workbench.io/package-id": package.id}},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": node_selector,
                        # A hostPath is created root-owned; the agent's user must own it to write models.
                        "initContainers": [{
                            "name": "data-owner", "image": image or default_image(),
                            "command": ["chown", f"{AGENT_UID}:{AGENT_UID}", "/var/lib/workbench"],
                            "securityContext": {"runAsUser": 0, "runAsNonRoot": False,
                                                "allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}},
                            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/workbench"}],
                        }],
                        "containers": [container],
                        "volumes": [
                            {"name": "data", "hostPath": {"path": "/var/lib/workbench", "type": "DirectoryOrCreate"}},
                            {"name": "trusted-keys", "configMap": {"name": "workbench-trusted-keys"}},
                        ],
                    },
                },
            },
        },
    }


def export_k8s(package_dir: str | os.PathLike[str], out: str | os.PathLike[str], **options: Any) -> list[Path]:
    """Write the manifests into ``out`` (YAML when PyYAML is installed, else JSON, which is valid YAML).

    Example:
        >>> export_k8s("out/digits", "k8s/", broker="mqtt://gw:1883")   # doctest: +SKIP
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, obj in manifests(package_dir, **options).items():
        try:
            import yaml

            text = yaml.safe_dump(obj, sort_keys=False)
        except ImportError:
            text = json.dumps(obj, indent=2)
        path = folder / name
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        written.append(path)
    return written
