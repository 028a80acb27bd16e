"""Runs made of many measurements: sweeps, classification after cutting."""
