"""Data: corpora (the embedded Python-stdlib default), sliding-window datasets, prepared token files."""
