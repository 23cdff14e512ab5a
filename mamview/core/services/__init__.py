"""Background workers with no Qt: the inference service, its child process, the full-resolution decode child."""
