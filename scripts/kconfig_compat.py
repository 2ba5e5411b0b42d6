"""Let kconfiglib 14.1.0 parse the Kconfig syntax of newer Linux trees.

kconfiglib has not been released since 2020.  Linux 5.13 replaced the
`option modules` property of MODULES with a bare `modules` line, which
kconfiglib rejects as an unrecognized construct.  This module is the one
place that papers over such differences; every other construct kconfiglib
does not know still raises KconfigError with the file and line, so a tree
that really needs new parser support fails loudly instead of being
misread.
"""

import kconfiglib

KconfigError = kconfiglib.KconfigError


class Kconfig(kconfiglib.Kconfig):
    """kconfiglib.Kconfig that also accepts the Linux >= 5.13 syntax."""

    def _tokenize(self, s: str) -> tuple:
        # A line holding just `modules` means exactly what `option modules`
        # meant before 5.13.  Only whole lines match, so symbols, prompts
        # and help text that mention "modules" are left alone.
        if s.split() == ["modules"]:
            s = s.replace("modules", "option modules", 1)
        return super()._tokenize(s)
