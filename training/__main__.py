"""`python -m collab_keras.training ...` is the `collab-keras` command."""

from collab_keras.training.cli import main

if __name__ == "__main__":
    main()
