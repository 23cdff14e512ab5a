"""DICOM networking: a storage node that receives, files, indexes and scores mammograms;
query/retrieve of a woman's priors; C-STORE and C-ECHO to other nodes.

The API the GUI and the other areas use (all Qt-free; pynetdicom loads when a node starts or a
request is made):

- `PacsNode.parse("AE@host:port")`, `PacsNode.from_dict`, `nodes_from_settings(settings)`
- `echo(node, our_ae) -> EchoResult`
- `StorageNode(lib, ae_title, port, host, allowed_aes, allowed_hosts, score, model, device,
  on_event, allow_any, limits, sop_classes)` with `start()`, `stop()`, `wait_idle()`, `allow()`,
  `bound_port`, `is_open`, `stats`; events in `scp`. Without an allow-list it needs
  `allow_any=True` (else `scp.NodeOpenRefused`); `guard.NodeLimits` holds its timeouts and caps
- `find_studies(node, patient_id, our_ae)`, `fetch_priors(lib, patient_id, pacs, our_ae,
  move_destination, progress, all_studies=False, issuer=None, cancel=None) -> FetchSummary`
  (Study Root, else Patient Root; priors only unless `all_studies`; `cancel` sends C-CANCEL), `send_files(node, paths, our_ae) -> SendSummary`
- `NetError`: a network operation failed; its message is for the user
"""

import importlib

# Loaded on first use (PEP 562): `mamview --help` and the node's defaults in the parser must
# not pay for pynetdicom, the inference service and the decoders (about 1.5 s).
_EXPORTS = {
    **dict.fromkeys(("EchoResult", "NetError", "PacsNode", "echo", "nodes_from_settings",
                     "resolve_node"), "nodes"),
    **dict.fromkeys(("FetchSummary", "SendSummary", "StudyInfo", "fetch_priors", "find_studies",
                     "send_files"), "qr"),
    "StorageNode": "scp",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
