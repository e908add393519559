"""Automated red teaming: attack styles (mutations), a Rainbow-style archive and the search loop that fills it."""
