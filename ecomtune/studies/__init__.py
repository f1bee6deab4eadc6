"""Studies that run the whole toolkit end to end: the demo (synthetic catalog -> align -> mid -> sft -> bench) and
the multi-image strategy study. They sit above training and benchmarking because they drive both."""
