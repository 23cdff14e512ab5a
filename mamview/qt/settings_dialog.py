"""Settings: library location (shown; chosen with --home or MAMVIEW_HOME), model, device, the
risk thresholds, the chart on a second screen and the DICOM node; saved with core.settings."""

from __future__ import annotations

from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox,
                               QDoubleSpinBox, QFormLayout, QLabel, QLineEdit, QSpinBox)

from mamview.core import reference
from mamview.core import settings as settings_mod
from mamview.core.paths import Library


class SettingsDialog(QDialog):
    """Edits a copy of the settings; `result_settings()` after accept."""

    def __init__(self, lib: Library, current: settings_mod.Settings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.lib = lib
        self._settings = current
        form = QFormLayout(self)
        loc = QLineEdit(str(lib.home))
        loc.setReadOnly(True)
        loc.setToolTip("Start mamview with --home DIR (or set MAMVIEW_HOME) to use another library")
        form.addRow("Library location", loc)
        form.addRow("", QLabel("<small>Another library: start with <tt>mamview --home DIR</tt>"
                               " or set MAMVIEW_HOME.</small>"))
        self.model = QComboBox()
        self.model.addItem("Best available", "auto")
        from mamview.core.models import registry

        for e in registry.list_models(lib):
            text = e.name + ("" if e.available else f" — unavailable: {e.reason}")
            self.model.addItem(text, e.model_id)
            if not e.available:
                idx = self.model.count() - 1
                self.model.model().item(idx).setEnabled(False)
        self._select(self.model, current.model)
        form.addRow("Risk model", self.model)
        self.device = QComboBox()
        self.device.addItem("Automatic (GPU if present)", "auto")
        try:
            from mamview.core.models.device import available_devices

            devices = available_devices()
        except Exception:  # noqa: BLE001 - torch missing: only the CPU is offered
            devices = ["cpu"]
        for d in devices:
            if d != "auto":
                self.device.addItem(d.upper(), d)
        self._select(self.device, current.device)
        form.addRow("Inference device", self.device)
        t = list(current.thresholds_percent) + list(reference.DEFAULT_THRESHOLDS_PERCENT)
        self.low = QDoubleSpinBox(decimals=2, minimum=0.1, maximum=50.0, singleStep=0.1, suffix=" %")
        self.high = QDoubleSpinBox(decimals=2, minimum=0.1, maximum=50.0, singleStep=0.1, suffix=" %")
        self.low.setValue(float(t[0]))
        self.high.setValue(float(t[1]))
        form.addRow("Threshold (increased risk)", self.low)
        form.addRow("Threshold (high)", self.high)
        form.addRow("", QLabel(f"<small>{reference.defaults_note()}</small>"))
        # the same setting as View → Chart on the second screen (Ctrl+Shift+S)
        self.second_screen = QCheckBox("Show the risk chart and metrics on a second screen "
                                       "when one is connected (images stay on this one)")
        self.second_screen.setChecked(bool(current.second_screen))
        form.addRow("Screens", self.second_screen)
        self.node_enabled = QCheckBox("Receive images from modalities and PACS")
        self.node_enabled.setChecked(bool(current.node_enabled))
        form.addRow("DICOM node", self.node_enabled)
        self.node_ae = QLineEdit(current.node_ae_title)
        self.node_ae.setMaxLength(16)
        form.addRow("Our AE title", self.node_ae)
        self.node_port = QSpinBox(minimum=1, maximum=65535)
        self.node_port.setValue(int(current.node_port))
        form.addRow("Port", self.node_port)
        self.node_aes = QLineEdit(", ".join(current.node_allowed_aes))
        self.node_aes.setPlaceholderText("e.g. MG_ROOM1, PACS")
        form.addRow("Accept calling AE titles", self.node_aes)
        self.node_hosts = QLineEdit(", ".join(current.node_allowed_hosts))
        self.node_hosts.setPlaceholderText("e.g. 10.1.2.3, 10.1.4.0/24")
        form.addRow("Accept from addresses", self.node_hosts)
        self.node_any = QCheckBox("Accept any peer (not recommended: anyone who reaches the port "
                                  "can store images)")
        self.node_any.setChecked(bool(current.node_allow_any))
        form.addRow("", self.node_any)
        form.addRow("", QLabel("<small>The PACS nodes for Fetch priors are accepted too. With no list and "
                               "no \u201cany peer\u201d the node does not start.</small>"))
        form.addRow("", QLabel("<small>PACS nodes for Fetch priors: <tt>pacs_nodes</tt> in "
                               "settings.json, or type AE@host:port.</small>"))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        from mamview.qt.export import style_checkbox

        for box in (self.second_screen, self.node_enabled, self.node_any):
            style_checkbox(box)  # an unticked box must read on the dark theme

    @staticmethod
    def _select(combo: QComboBox, value: str) -> None:
        i = combo.findData(value)
        combo.setCurrentIndex(i if i >= 0 else 0)

    def result_settings(self) -> settings_mod.Settings:
        """The edited settings (thresholds sorted, duplicates removed)."""
        s = settings_mod.Settings(**{**self._settings.__dict__})
        s.model = self.model.currentData() or "auto"
        s.device = self.device.currentData() or "auto"
        s.node_enabled = self.node_enabled.isChecked()
        s.node_ae_title = self.node_ae.text().strip().upper() or "MAMVIEW"
        s.node_port = self.node_port.value()
        s.node_allowed_aes = _items(self.node_aes.text(), upper=True)
        s.node_allowed_hosts = _items(self.node_hosts.text())
        s.node_allow_any = self.node_any.isChecked()
        s.second_screen = self.second_screen.isChecked()
        s.thresholds_percent = sorted({round(self.low.value(), 2), round(self.high.value(), 2)})
        return s

    def save(self) -> settings_mod.Settings:
        """Write the edited settings to the library and return them."""
        s = self.result_settings()
        settings_mod.save(s, self.lib.settings_file)
        return s


def _items(text: str, upper: bool = False) -> list[str]:
    """A comma- or space-separated list from a line edit, without blanks or repeats."""
    out: list[str] = []
    for part in text.replace(",", " ").split():
        part = part.upper() if upper else part
        if part not in out:
            out.append(part)
    return out
