"""Plot helpers for the chapters: plain functions that return matplotlib figures or arrays."""
