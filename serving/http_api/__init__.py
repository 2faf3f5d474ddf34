"""The KServe V2 REST front door (Triton's HTTP API and extensions)."""
