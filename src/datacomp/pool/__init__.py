"""Candidate pools: the embedded synthetic world (``synth``) and, later, CommonPool / BYOD downloads."""
