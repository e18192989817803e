"""Simulated tasks behind one env interface; scripted experts; vector envs."""
