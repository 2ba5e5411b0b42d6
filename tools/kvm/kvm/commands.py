"""The table of lkvm commands, perf style: a command is a
builtin-<name>.py file in tools/kvm and a row here."""

COMMANDS = (
    ("run", "Start the virtual machine"),
    ("setup", "Setup a new virtual machine"),
    ("version", "Print the version of lkvm"),
    ("help", "Display help information about lkvm"),
)


def usage() -> str:
    lines = ["", " usage: lkvm [--version] [--help] COMMAND [ARGS]", "",
             " The most commonly used lkvm commands are:"]
    lines += [f"   {name:<10} {text}" for name, text in COMMANDS]
    lines += ["", " See 'lkvm help COMMAND' for more information on a specific command.", ""]
    return "\n".join(lines)
