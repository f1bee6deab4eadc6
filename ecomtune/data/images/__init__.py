"""Images of the data: decoding and checking files (with the preparation cache), the multi-image strategies that
present a sample's images to a backbone, and item crops (box geometry, pHash, cropping an items file)."""
