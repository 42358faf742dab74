"""Local paths and s3:// URLs behind one API: open, list, atomic writes, output folders;
the one retry layer for object stores and one-line errors with credentials redacted."""
