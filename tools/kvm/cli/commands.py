"""The table of lkvm commands, perf style: a command is a
builtin-<name>.py file in tools/kvm and a row here."""

COMMANDS = (
    ("run", "Start the virtual machine"),
    ("sandbox", "Run a command in a sandboxed guest"),
    ("setup", "Setup a new virtual machine"),
    ("list", "Print a list of running instances on the host"),
    ("pause", "Pause the virtual machine"),
    ("resume", "Resume the virtual machine"),
    ("stop", "Stop a running instance"),
    ("debug", "Print debug information from a running instance"),
    ("balloon", "Inflate or deflate the virtio balloon"),
    ("stat", "Print statistics about a running instance"),
    ("version", "Print the version of lkvm"),
    ("help", "Display help information about lkvm"),
)


def usage() -> str:
    lines = ["", " usage: lkvm [--version] [--help] COMMAND [ARGS]", "",
             " The most commonly used lkvm commands are:"]
    lines += [f"   {name:<10} {text}" for name, text in COMMANDS]
    lines += ["", " See 'lkvm help COMMAND' for more information on a specific command.", ""]
    return "\n".join(lines)
