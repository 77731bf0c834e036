"""Migration: a database kept at a version of versioned SQL migrations."""
