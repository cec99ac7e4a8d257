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

    Example:

    ```python
    model, report = reparametrize(backbone, shared_key_dim=192)
    print(report.summary())
    report.seconds, report[0]["relative_error"]
    ```
    """

    def __init__(self, entries=(), seconds=0.0):
        super().__init__(entries)
        self.seconds = float(seconds)

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
            line += (
                f"; calibration: {aware} data-aware, "
                f"{len(self) - aware} fell back to tensor-only"
            )
        return line + "."

    def __repr__(self):
        return f"ConversionReport({list.__repr__(self)}, seconds={self.seconds!r})"
