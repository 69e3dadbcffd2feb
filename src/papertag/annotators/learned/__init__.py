"""The learned annotator: a local model trained on labelled papers (see ``training``)."""
