"""Prints the parameter and decoding-cache tables of docs/models.md.

Closed-form counts (`collab_keras.models.count_parameters`), checked against
`model.count_params()` by tests/test_models_parameter_count.py. Nothing is
built or timed, so the output does not depend on the machine.

    python benchmarks/parameter_table.py
"""

from collab_keras.models import BERT_PRESETS
from collab_keras.models import TRANSFORMER_PRESETS
from collab_keras.models import VIT_PRESETS
from collab_keras.models import cache_bytes_per_token
from collab_keras.models import count_parameters

FAMILIES = (
    ("transformer", TRANSFORMER_PRESETS),
    ("bert", BERT_PRESETS),
    ("vit", VIT_PRESETS),
)


def shared_key_dims(hidden_dim):
    """`hidden_dim` and its 1/2, 1/3, 1/4, 1/8 where whole."""
    fractions = (1, 2, 3, 4, 8)
    return [hidden_dim // f for f in fractions if hidden_dim % f == 0]


def millions(n):
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def parameter_table():
    lines = []
    for family, presets in FAMILIES:
        lines.append(f"\n#### {family}\n")
        lines.append(
            "| preset | concatenate | collaborative at shared_key_dim "
            "(d, d/2, d/3, d/4, d/8 where whole) |"
        )
        lines.append("|---|---|---|")
        for preset, config in presets.items():
            concatenate = count_parameters(family, preset)
            cells = []
            for k in shared_key_dims(config["hidden_dim"]):
                n = count_parameters(
                    family, preset, attention="collaborative", shared_key_dim=k
                )
                cells.append(f"{k}: {millions(n)} ({n:,})")
            lines.append(
                f"| {preset} | {millions(concatenate)} ({concatenate:,}) | "
                + "; ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def cache_table():
    lines = [
        "| preset | concatenate (2 d per layer) | collaborative "
        "(K + N + d per layer) at shared_key_dim |",
        "|---|---|---|",
    ]
    for preset, config in TRANSFORMER_PRESETS.items():
        concatenate = cache_bytes_per_token(preset)
        cells = []
        for k in shared_key_dims(config["hidden_dim"]):
            n = cache_bytes_per_token(preset, "collaborative", k)
            cells.append(f"{k}: {n:,} B ({n / concatenate:.0%})")
        lines.append(f"| {preset} | {concatenate:,} B | " + "; ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("### Parameters")
    print(parameter_table())
    print("\n### Decoder self-attention cache, float32 bytes per target token")
    print("(all decoder layers; cross-attention caches the same per source token)\n")
    print(cache_table())
