"""``python -m multilabel_imagenet`` runs the command-line interface."""

from multilabel_imagenet.cli import main

main()
