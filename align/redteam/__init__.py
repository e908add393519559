"""Automated red teaming: attack strategies (style mutations, an attacker LM, multi-turn escalation), a Rainbow-style
archive and the search loop that fills it."""
