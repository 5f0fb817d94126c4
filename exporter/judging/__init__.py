"""Judging: pure decisions (did the candidate regress?) with the samples and the clock passed in."""
