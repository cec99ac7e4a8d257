"""Prints the parameter and decoding-cache tables of docs/models.md.

Closed-form counts (`collab_keras.models.count_parameters`), checked against
`model.count_params()` by tests/test_models_parameter_count.py. Nothing is
built or timed, so the output does not depend on the machine.

    python benchmarks/parameter_table.py
"""

from collab_keras.models import cache_bytes_per_token
from collab_keras.models import count_parameters
from collab_keras.models.presets import BERT_ARCHITECTURES
from collab_keras.models.presets import TRANSFORMER_ARCHITECTURES
from collab_keras.models.presets import VIT_ARCHITECTURES

FAMILIES = (
    ("transformer", TRANSFORMER_ARCHITECTURES),
    ("bert", BERT_ARCHITECTURES),
    ("vit", VIT_ARCHITECTURES),
)


def shared_key_dims(hidden_dim):
    """`hidden_dim` and its 1/2, 1/3, 1/4, 1/8 where whole."""
    fractions = (1, 2, 3, 4, 8)
    return [hidden_dim // f for f in fractions if hidden_dim % f == 0]


def millions(n):
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def parameter_table():
    lines = []
    for family, architectures in FAMILIES:
        lines.append(f"\n#### {family}\n")
        lines.append(
            "| architecture | concatenate | collaborative at shared_key_dim "
            "(d, d/2, d/3, d/4, d/8 where whole) |"
        )
        lines.append("|---|---|---|")
        for name, config in architectures.items():
            concatenate = count_parameters(family, name)
            cells = []
            for k in shared_key_dims(config["hidden_dim"]):
                n = count_parameters(
                    family, name, attention="collaborative", shared_key_dim=k
                )
                cells.append(f"{k}: {millions(n)} ({n:,})")
            lines.append(
                f"| {name} | {millions(concatenate)} ({concatenate:,}) | "
                + "; ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def cache_table():
    lines = [
        "| architecture | concatenate (2 d per layer) | collaborative "
        "(K + N + d per layer) at shared_key_dim |",
        "|---|---|---|",
    ]
    for name, config in TRANSFORMER_ARCHITECTURES.items():
        concatenate = cache_bytes_per_token(name)
        cells = []
        for k in shared_key_dims(config["hidden_dim"]):
            n = cache_bytes_per_token(name, "collaborative", k)
            cells.append(f"{k}: {n:,} B ({n / concatenate:.0%})")
        lines.append(f"| {name} | {concatenate:,} B | " + "; ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("### Parameters")
    print(parameter_table())
    print("\n### Decoder self-attention cache, float32 bytes per target token")
    print("(all decoder layers; cross-attention caches the same per source token)\n")
    print(cache_table())
