"""Author-year labels in the book's bibliography (a Sphinx extension, loaded from _config.yml).

sphinxcontrib-bibtex formats the bibliography with a pybtex *formatting* style, whose
*label* style gives the text in front of each entry. pybtex's styles only have alpha
("[CWG+21]") and numeric labels; the citations in the text are author-year
(``bibtex_reference_style: author_year``). This module registers, with pybtex's plugin
registry, a label style that writes "Chen et al., 2021" (one author: "Takatsu, 2011"; two:
"Huang and Wang, 2017"; "a", "b", ... after the year where two entries would share a
label) and a formatting style ``kd2m`` (pybtex's ``unsrt`` with these labels, sorted by
author, year and title), which ``bibtex_default_style: kd2m`` selects.

It also registers, with sphinxcontrib-bibtex's own plugin registry, the referencing style
``kd2m_author_year`` (``bibtex_reference_style``): sphinxcontrib-bibtex's ``author_year``
with round brackets and semicolons, "(Gou et al., 2021; Hinton et al., 2015)", as in the
paper, instead of its default square brackets.

Registration happens when Sphinx imports this module, before sphinxcontrib-bibtex looks the
style up (it does so while reading the ``bibliography`` directive).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pybtex.plugin import find_plugin, register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from sphinxcontrib.bibtex import plugin as bibtex_plugin
from sphinxcontrib.bibtex.style.referencing import BracketStyle
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle

LABEL_STYLE = "kd2m_author_year"
FORMATTING_STYLE = "kd2m"
REFERENCING_STYLE = "kd2m_author_year"


def _surname(person) -> str:
    """A person's surname as plain text ("Peyr{\\'e}" -> "Peyré"), "von" part included."""
    latex = " ".join(person.prelast_names + person.last_names)
    return Text.from_latex(latex).render_as("text")


def _authors(entry) -> str:
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_surname(p) for p in persons if " ".join(p.last_names) != "others"]
    if not names:
        return Text.from_latex(entry.fields.get("title", entry.key)).render_as("text")
    if len(names) == 1 and len(persons) == 1:
        return names[0]
    if len(names) == 2 and len(persons) == 2:
        return f"{names[0]} and {names[1]}"
    return f"{names[0]} et al."


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels "Surname, year", "Surname and Surname, year", "Surname et al., year"."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [self.format_label(entry) for entry in entries]
        count = Counter(labels)
        seen: Counter = Counter()
        for label in labels:
            if count[label] == 1:
                yield label
            else:
                yield label + chr(ord("a") + seen[label])
                seen[label] += 1

    def format_label(self, entry) -> str:
        year = entry.fields.get("year", "n.d.")
        return f"{_authors(entry)}, {year}"


class AuthorYearStyle(UnsrtStyle):
    """pybtex's unsrt formatting with author-year labels, sorted by author, year, title."""

    default_label_style = LABEL_STYLE
    default_sorting_style = "author_year_title"


def _round() -> BracketStyle:
    return BracketStyle(left="(", right=")", sep="; ")


@dataclass
class RoundAuthorYearReferenceStyle(AuthorYearReferenceStyle):
    """Author-year citations in round brackets, separated by semicolons."""

    bracket_textual: BracketStyle = field(default_factory=_round)
    bracket_parenthetical: BracketStyle = field(default_factory=_round)
    bracket_author: BracketStyle = field(default_factory=_round)
    bracket_label: BracketStyle = field(default_factory=_round)
    bracket_year: BracketStyle = field(default_factory=_round)


def _register() -> None:
    for group, name, klass in (
        ("pybtex.style.labels", LABEL_STYLE, AuthorYearLabelStyle),
        ("pybtex.style.formatting", FORMATTING_STYLE, AuthorYearStyle),
    ):
        try:
            registered = find_plugin(group, name)
        except Exception:  # pybtex raises PluginNotFound, a subclass of PybtexError
            registered = None
        if registered is None:
            register_plugin(group, name, klass)
    bibtex_plugin.register_plugin(
        "sphinxcontrib.bibtex.style.referencing", REFERENCING_STYLE, RoundAuthorYearReferenceStyle
    )


_register()


def setup(app):
    _register()
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
