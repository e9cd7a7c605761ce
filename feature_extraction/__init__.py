"""Feature extraction: one decode pass per video feeding every requested extractor."""
