"""Data sources and model bundles (this package deliberately shadows Hugging Face `datasets`)."""
