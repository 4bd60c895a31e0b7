"""The HTTP endpoint, the local registry and deploy targets."""
