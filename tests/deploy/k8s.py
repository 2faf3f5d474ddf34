"""Kubernetes helpers shared by the k8s and KServe manifest tests."""

from __future__ import annotations

import kubernetes_validate

#: Oldest Kubernetes we claim (gRPC probes GA in 1.27, 1.29 is the oldest
#: schema set we check) and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]
