"""A command's option list as kvmtool's usage_with_options() lays it out
(util/parse-options.c): a usage line, then each group's title and its
options, one a line, the help text in a column after 24 characters."""

import argparse
from collections.abc import Sequence

# (title, long option names in the group's order): a command's table.
# Options no group names follow the first group's; names the parser lacks
# are skipped, and so is a group left empty.  argparse groups whose title
# ends in ":", kvmtool's style, come after the table (the arch's options).
Groups = Sequence[tuple[str, Sequence[str]]]

OPTS_WIDTH = 24     # kvmtool's USAGE_OPTS_WIDTH
GAP = 2             # and USAGE_GAP


def long_name(action: argparse.Action) -> str:
    return next((s for s in action.option_strings if s.startswith("--")),
                action.option_strings[0])


def option_line(action: argparse.Action) -> str:
    shorts = [s for s in action.option_strings if not s.startswith("--")]
    longs = [s for s in action.option_strings if s.startswith("--")]
    text = "    " + (shorts[0] if shorts else "    ")
    if shorts and longs:
        text += ", "
    text += longs[0] if longs else ""
    if action.nargs != 0:
        argh = action.metavar or ("n" if action.type is int else action.dest)
        text += f" <{argh}>"
    if len(text) <= OPTS_WIDTH:
        return f"{text:<{OPTS_WIDTH + GAP}}{action.help or ''}".rstrip()
    return f"{text}\n{'':<{OPTS_WIDTH + GAP}}{action.help or ''}".rstrip()


def format_usage(synopsis: str, parser: argparse.ArgumentParser, groups: Groups) -> str:
    options = {long_name(a): a for a in parser._actions
               if a.option_strings and a.help != argparse.SUPPRESS}
    groups = [*groups, *((g.title, [long_name(a) for a in g._group_actions])
                         for g in parser._action_groups if (g.title or "").endswith(":"))]
    named = {name for _, names in groups for name in names}
    rest = [name for name in options if name not in named]
    lines = ["", f" usage: {synopsis}"]
    for i, (title, names) in enumerate(groups or [("", ())]):
        body = [option_line(options[n]) for n in (*names, *(rest if i == 0 else ()))
                if n in options]
        if body or not i:
            lines += ["", title] if title else [""]
            lines += body
    return "\n".join(lines) + "\n"
