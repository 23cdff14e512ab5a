"""Risk models.

Torch-free, for the listing and the window: `identity` (ModelIdentity), `errors`, `registry`
(which models are installed, read from their config.json). With torch: `base` (the RiskModel
contract), `preprocess`, `mirai` (the network and calibrator), `device`, `converted` (our own
model folder format: write and load) and `official` (the restricted readers of the official
release and its one-time conversion).
"""
