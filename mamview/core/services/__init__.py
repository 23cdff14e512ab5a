"""Background workers with no Qt: the inference service (inference), its child process
(inference_process), the full-resolution decode child (decode), and the process-wide generation
ids they hand out (generations)."""
