"""The ``doorlock`` command: one subcommand per module, imported only when it runs.

Commands live in their own modules so that ``doorlock validate`` does not pay for importing
the receiver or the report renderer, and so that each command can be tested on its own.
"""

from __future__ import annotations

import importlib

import click

# name -> (module, attribute, one-line help shown by `doorlock --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "validate": ("compiler.validate_cli", "validate", "Check an access repository and report every problem."),
    "keygen": ("compiler.keys_cli", "keygen", "Generate an Ed25519 signing or root key pair."),
    "signers": ("compiler.keys_cli", "signers", "Create and sign the signers document with a root key."),
    "compile": ("compiler.compile_cli", "compile_command", "Compile one signed bundle per lock."),
    "diff": ("compiler.diff_cli", "diff", "Show who gains or loses access between two revisions."),
    "explain": ("compiler.explain_cli", "explain", "Explain the decision for a key or person at a lock and time."),
    "report": ("compiler.report_cli", "report", "Write the static HTML site for admins."),
    "import": ("compiler.import_cli", "import_group", "Import data from another access-control system."),
    "pki": ("compiler.pki_cli", "pki", "Manage the deployment's private CA and certificates."),
    "nginx-config": ("compiler.nginx_cli", "nginx_config", "Write the nginx server block for bundle hosting."),
    "publish": ("compiler.publish_cli", "publish", "Publish a compiled build atomically."),
    "receiver": ("receiver.cli", "receiver", "Run the statistics receiver."),
    "stats": ("receiver.stats_cli", "stats", "Query the statistics the locks pushed."),
    "demo": ("compiler.demo", "demo", "Run the whole system on loopback and show each step."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attribute, _ = COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            return _unavailable(name)
        return getattr(module, attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str) -> click.Command:
    @click.command(name=name, help="Not available in this build.")
    def command() -> None:
        raise click.ClickException(f"'doorlock {name}' is not available in this build")

    return command


@click.group(cls=LazyGroup)
@click.version_option(package_name="doorlock")
def main() -> None:
    """Door access as code: validate, compile, sign and publish per-lock bundles."""
