"""Tests that start real daemons, workers and other processes, send signals, load models."""
