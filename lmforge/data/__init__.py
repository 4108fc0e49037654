"""Data: sources (files, directories, JSONL, Parquet, datasets), token files, objectives, task datasets."""
