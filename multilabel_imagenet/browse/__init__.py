"""Looking at labels: the static gallery of ``multilabel-imagenet show`` (:mod:`.gallery`) and the local web app of
``multilabel-imagenet label-regions`` (:mod:`.webapp`, paper Supp. F.5). This package may use both ``builder`` and
``evaluation``; neither of them imports it."""
