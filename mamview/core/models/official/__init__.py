"""Safe reading and one-time conversion of the official Mirai release files (spec §5-6).

The release ships *whole pickled modules* (`torch.save(model)`) and a pickled calibrator. Loading
them the usual way (`torch.load(weights_only=False)`, `pickle.load`) runs whatever the pickle
names. We never do that:

* `unpickler`: `RestrictedUnpickler.find_class` resolves globals only from a fixed table —
  `inert` placeholders for the model classes (`onconet.*`, `torch.nn.*`, `argparse.Namespace`,
  `sklearn.*`, unknown `numpy.*`), whose constructor and `__setstate__` only *record* their
  arguments, and the `safe_globals` allow-list (our own tensor rebuild functions, dtype markers
  for the storage classes, a few data constructors that cannot run code). Anything else raises
  `UnsafeSnapshotError` naming the refused global, before anything runs.
* `containers`: the torch container formats, read by our own code too (not `torch.load`): the
  legacy (pre-1.6, non-zip) stream and the zip archive.
* `walk`: values read out of the placeholder trees (`_modules`, `_parameters`, `_buffers`).
* `readers`: the encoder, transformer and calibrator files → what they say about themselves.
* `network`: the MiraiNet they describe, built under an allocation cap, and its state dict.
* `release`: finding the files in a folder or zip, and `convert_release`, which writes our own
  format (`models.converted`) once.

Release files are untrusted input, so everything is bounded (`limits.SnapshotLimits`, each cap
overridable with MAMVIEW_MODEL_<NAME>) and checked *before* allocating: file and release sizes;
zip entry count, directory size, declared sizes and compression ratio; pickle opcodes, calls,
memo entries, tuple nesting, same-hash keys (hash flooding) and what calls may materialise
(`range(n)`, `bytes(n)`, copies of one big value); declared storage sizes against the bytes that
follow, tensor views against their storage, numpy array states against their data; the network
a snapshot describes against the weights it holds; nodes and depth walked afterwards; and wall
time. Every refusal is an `InputRefused` (a `MamviewError`, see `models.errors`) with a one-line
message.

This package's `__init__` imports nothing, so `models.converted` can use `limits` without
loading the readers.
"""
