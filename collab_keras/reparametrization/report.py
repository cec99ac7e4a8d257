"""The report that `reparametrize` returns with a converted layer or model."""


class ConversionReport(list):
    """One dict per converted attention layer, plus the whole conversion's
    wall time.

    A list (so `report[0]["relative_error"]` and `len(report)` work as on a
    plain list) whose entries have the keys listed in `reparametrize`'s
    docstring.

    Args:
        entries: the per-layer dicts.
        seconds: wall-clock seconds of the whole conversion (copying the
            model, recording calibration activations, decompositions).
        calibration_source: what the conversion was calibrated on: `None`
            (the weights alone), `"synthetic"` (the model's
            `synthetic_inputs()`) or `"given"` (the caller's data).

    Example:

    ```python
    model, report = reparametrize(backbone, shared_key_dim=192)
    print(report.summary())
    report.seconds, report[0]["relative_error"]
    ```
    """

    def __init__(self, entries=(), seconds=0.0, calibration_source=None):
        super().__init__(entries)
        self.seconds = float(seconds)
        self.calibration_source = calibration_source

    def summary(self):
        """One line: layers, shared key size, errors, calibration, seconds."""
        if not self:
            return f"No attention layer converted ({self.seconds:.1f} s)."
        ranks = sorted({entry["shared_key_dim"] for entry in self})
        errors = [entry["relative_error"] for entry in self]
        line = (
            f"Converted {len(self)} attention layer"
            f"{'s' if len(self) > 1 else ''} to shared_key_dim="
            f"{','.join(str(r) for r in ranks)} in {self.seconds:.1f} s; "
            f"relative error {min(errors):.3g}-{max(errors):.3g}"
        )
        calibrations = [entry.get("calibration") for entry in self]
        if any(calibrations):
            aware = calibrations.count("data-aware")
            source = {"synthetic": "synthetic inputs", "given": "given data"}
            line += (
                f"; calibration: {aware} data-aware, "
                f"{len(self) - aware} fell back to tensor-only"
            )
            if self.calibration_source in source:
                line += f" (on {source[self.calibration_source]})"
        elif max(errors) > 0:
            line += "; from the weights alone (no calibration)"
        return line + "."

    def __repr__(self):
        return (
            f"ConversionReport({list.__repr__(self)}, seconds={self.seconds!r}"
            f", calibration_source={self.calibration_source!r})"
        )
