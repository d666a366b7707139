"""Reward functions for the GRPO tests, imported by name (`--rewards tinyrewards:good`) as a user's would be."""

from __future__ import annotations


def good(completion: str, reference: str, **info) -> float:
    """How often the tiny model says "good": a reward it can learn to raise within a few steps."""
    return float(completion.split().count("good"))


def raises(completion: str, reference: str, **info) -> float:
    raise ValueError("broken reward")


def not_a_number(completion: str, reference: str, **info) -> str:
    return "high"
