"""Constitutions: the written principles behind critiques, revisions and AI preference labels.

The data model and its strict loader live in :mod:`.model` and are re-exported here, so
``from align.constitution import load_constitution`` is all most code needs. Working with constitutions
over time has a module per concern, imported from where it lives:

- :mod:`.lint`: warnings about what loads fine but is probably a mistake
- :mod:`.versions`: semantic version arithmetic (next version at a level, level between two)
- :mod:`.diff`: semantic diff by principle id, and the version bump a change needs
- :mod:`.render`: a diff as text for a terminal or markdown for a pull request
- :mod:`.sources`: files and ``path@gitrev`` sources, and the CI check of a change against a revision
- :mod:`.edit`: version bumps that keep comments, our own file layout, atomic writes
- :mod:`.layouts`: import from and export to other projects' layouts (llm-swarm, the Anthropic paper)
"""

from align.constitution.model import (
    ROLES,
    SUFFIXES,
    Constitution,
    ConstitutionError,
    FieldPath,
    Principle,
    load_constitution,
    load_constitution_data,
    parse_constitution_text,
)

__all__ = [
    "ROLES",
    "SUFFIXES",
    "Constitution",
    "ConstitutionError",
    "FieldPath",
    "Principle",
    "load_constitution",
    "load_constitution_data",
    "parse_constitution_text",
]
