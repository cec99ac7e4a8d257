"""Figure of the head redundancy of a model."""


def plot_head_redundancy(redundancy, path=None, title=None):
    """Plots cumulative energy curves from `head_redundancy`.

    Three panels: the concatenated query kernels, the concatenated key
    kernels (one curve per layer), and the heads' own kernels (mean over
    heads, query solid, key dashed). Horizontal lines mark the thresholds
    of the first layer's `query_dims`. Needs matplotlib, imported here.

    Args:
        redundancy: the list returned by `head_redundancy`.
        path: optional file to save the figure to (e.g. a `.png`).
        title: optional figure title.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not redundancy:
        raise ValueError(
            "`redundancy` must be the non-empty list returned by "
            f"`head_redundancy`. Received: redundancy={redundancy!r}"
        )
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = (
        (axes[0], "query_energy", "concatenated Wq"),
        (axes[1], "key_energy", "concatenated Wk"),
    )
    for axis, key, label in panels:
        for layer in redundancy:
            energy = layer[key]
            axis.plot(range(1, len(energy) + 1), energy, label=layer["name"])
        axis.set_title(label)
        axis.set_xlabel("dimensions")
    for index, layer in enumerate(redundancy):
        color = f"C{index}"
        for key, style in (("query_head_energy", "-"), ("key_head_energy", "--")):
            energy = layer[key].mean(axis=0)
            axes[2].plot(range(1, len(energy) + 1), energy, style, color=color)
    axes[2].set_title("per head (mean over heads; Wq solid, Wk dashed)")
    axes[2].set_xlabel("dimensions")
    axes[0].set_ylabel("cumulative energy")
    for axis in axes:
        for threshold in redundancy[0]["query_dims"]:
            axis.axhline(threshold, color="gray", linewidth=0.5, linestyle=":")
        axis.set_ylim(0, 1.01)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure
