"""Batches for training: the collator that renders chats and builds labels, batches of samples prepared before
training, and packing several samples into one row."""
