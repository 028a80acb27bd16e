"""Shared plumbing every layer may use: errors, paths, options, threads, locks, the visitor policy."""
