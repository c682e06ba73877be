"""Runnable examples on public datasets, one per domain (see examples/README.md).

Each module has ``prepare(data_root, out_dir, limit=None) -> dict`` (writes train / validation /
test tables, returns their paths), ``make_config(paths)`` and ``main()``::

    python -m examples.banking77 --smoke        # customer service: text -> 77 intents
    python -m examples.fsdd_speech --smoke      # spoken digits: audio -> digit
    python -m examples.breastmnist --smoke      # medical imaging: ultrasound -> malignant?
    python -m examples.financial_phrasebank --smoke  # finance text -> sentiment
    python -m examples.stocknet --smoke         # tweets + past prices -> next-day up/down
    python -m examples.run_all --smoke          # all of them (what CI runs)
"""

EXAMPLES = ("banking77", "fsdd_speech", "breastmnist", "financial_phrasebank", "stocknet")
