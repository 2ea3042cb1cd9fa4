"""``witbuild experiment``: what curation buys, measured by training the same model on variants of one build."""
