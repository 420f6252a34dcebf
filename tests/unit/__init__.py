"""Tests of pure modules: no process started, no model loaded; the folder runs in seconds."""
