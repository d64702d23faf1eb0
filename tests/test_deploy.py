"""The deployment files in deploy/, docker-compose.yml and the Dockerfile, checked with real tools.

systemd units: `systemd-analyze verify` (Debian's `systemd` package) and `systemd-sysusers`;
Compose: the Compose Specification's JSON Schema, vendored in deploy/compose-spec.json;
every command line they run: parsed by the real `strandline` CLI, without running it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from daemon.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = ("strandline.service", "strandline-consume@.service")
CONSUMER_KINDS = ("drift", "retrain", "alerts")
# Where deploy/README.md installs Strandline; the tests point ExecStart= at this venv instead.
INSTALLED_BIN = "/opt/strandline/bin/strandline"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (Debian: apt-get install systemd)"
)


# -- systemd -------------------------------------------------------------------------------------


def _unit_directives(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order: unit files repeat keys, so configparser does not fit."""
    directives: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        directives.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return directives


@pytest.fixture
def units_dir(tmp_path: Path) -> Path:
    """The units, with ExecStart= pointed at this venv's `strandline`.

    `systemd-analyze verify` fails when ExecStart's binary does not exist, and /opt/strandline
    exists only on an installed host; everything else in the units is verified as written.
    """
    strandline = Path(sysconfig.get_path("scripts")) / "strandline"
    assert strandline.is_file(), f"{strandline} missing: pip install -e . first"
    for name in UNITS:
        text = (DEPLOY / name).read_text()
        assert text.count(f"ExecStart={INSTALLED_BIN} ") == 1, f"{name}: ExecStart= is not {INSTALLED_BIN}"
        (tmp_path / name).write_text(text.replace(f"ExecStart={INSTALLED_BIN} ", f"ExecStart={strandline} "))
    return tmp_path


def _verify(*units: Path) -> list[str]:
    """What `systemd-analyze verify` says about our units; fails the test on a non-zero exit.

    Unknown keys and unparsable values are only warnings (exit 0), so the caller asserts on them.
    """
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if "strandline" in line]
    assert proc.returncode == 0, "\n".join([f"systemd-analyze verify exited {proc.returncode}:", *said])
    return said


@needs_systemd
def test_systemd_analyze_verify_accepts_the_units(units_dir: Path) -> None:
    instances = [units_dir / f"strandline-consume@{kind}.service" for kind in CONSUMER_KINDS]
    assert _verify(units_dir / "strandline.service", units_dir / "strandline-consume@.service", *instances) == []


@needs_systemd
def test_systemd_analyze_verify_reports_a_broken_unit(units_dir: Path) -> None:
    # Guards the test above: a typo must not pass unnoticed (verify only warns about it).
    unit = units_dir / "strandline.service"
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes\nProtectSystm=strict"))
    said = "\n".join(_verify(unit))
    assert "sometimes" in said
    assert "ProtectSystm" in said


@needs_systemd
def test_systemd_analyze_verify_rejects_a_missing_binary(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "strandline.service", tmp_path)
    with pytest.raises(AssertionError, match="not executable"):
        _verify(tmp_path / "strandline.service")


@pytest.mark.parametrize("name", UNITS)
def test_units_run_sandboxed_as_the_strandline_user_and_restart_on_failure(name: str) -> None:
    unit = _unit_directives(DEPLOY / name)
    expected = {
        "Service.User": ["strandline"],
        "Service.Group": ["strandline"],
        "Service.Restart": ["on-failure"],
        "Service.NoNewPrivileges": ["yes"],
        "Service.ProtectSystem": ["strict"],
        "Service.ProtectHome": ["read-only"],
        "Service.PrivateTmp": ["yes"],
        # The only writable path (ProtectSystem=strict makes the data roots read-only).
        "Service.StateDirectory": ["strandline"],
        "Service.EnvironmentFile": ["-/etc/strandline/strandline.env"],
        # daemon/sdnotify.py: READY=1, then WATCHDOG=1 every WatchdogSec/2 while healthy.
        "Service.Type": ["notify"],
        "Service.NotifyAccess": ["main"],
        "Service.WatchdogSec": ["30s"],
    }
    assert {key: unit.get(key) for key in expected} == expected
    env = unit["Service.Environment"]
    assert "STRANDLINE_CONFIG=/etc/strandline/strandline.toml" in env
    assert "STRANDLINE_STATE_DIR=%S/strandline" in env
    assert not {"Service.ReadWritePaths", "Service.DynamicUser"} & unit.keys()


def test_the_daemon_reloads_on_sighup() -> None:
    # The daemon answers SIGHUP with RELOADING=1 ... READY=1 (Type=notify-reload needs systemd 253).
    assert _unit_directives(DEPLOY / "strandline.service")["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]


@needs_systemd
def test_sysusers_file_creates_the_dedicated_user(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    assert sysusers is not None, "systemd-sysusers missing although systemd-analyze is installed"
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [sysusers, f"--root={tmp_path}", str(DEPLOY / "strandline.sysusers.conf")],
        capture_output=True,
        check=True,
        timeout=60,
    )
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    assert users["strandline"][5:] == ["/var/lib/strandline", "/usr/sbin/nologin"]


# -- Compose -------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    with (ROOT / "docker-compose.yml").open() as fh:
        data: dict[str, Any] = yaml.safe_load(fh)
    return data


def _compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((DEPLOY / "compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_docker_compose_file_is_valid_by_the_compose_specification() -> None:
    errors = [f"{e.json_path}: {e.message}" for e in _compose_validator().iter_errors(_compose())]
    assert errors == []


def test_compose_schema_rejects_a_misspelt_key() -> None:
    # Guards the test above: the vendored schema is strict, not a permissive stand-in.
    compose = _compose()
    compose["services"]["strandline"]["helthcheck"] = compose["services"]["kafka"]["healthcheck"]
    assert not _compose_validator().is_valid(compose)


def test_every_compose_service_has_a_healthcheck_that_asks_the_service_itself() -> None:
    services = _compose()["services"]
    assert {name for name, service in services.items() if "healthcheck" not in service} == set()
    for name in ("strandline", *CONSUMER_KINDS):
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert "/healthz" in probe and ":9464" in probe, name
    assert services["strandline"]["environment"]["STRANDLINE_HTTP"].endswith(":9464")
    for name in CONSUMER_KINDS:
        assert services[name]["command"][-2:] == ["--metrics-port", "9464"], name


# -- command lines -------------------------------------------------------------------------------


def _dockerfile_cmd() -> list[str]:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    cmds = [json.loads(line.removeprefix("CMD ")) for line in lines if line.startswith("CMD [")]
    assert len(cmds) == 1, "expected one exec-form CMD in the Dockerfile"
    return [str(arg) for arg in cmds[0]]


def _strandline_command_lines() -> dict[str, list[str]]:
    """Every `strandline` argument list the deployment files run, by where it comes from."""
    lines = {"Dockerfile CMD": _dockerfile_cmd()}
    for name, service in _compose()["services"].items():
        image = str(service.get("image", ""))
        if "build" in service or image.startswith("strandline:"):
            lines[f"compose {name}"] = [str(arg) for arg in service.get("command", _dockerfile_cmd())]
    for unit in UNITS:
        (exec_start,) = _unit_directives(DEPLOY / unit)["Service.ExecStart"]
        binary, *args = exec_start.split()
        assert binary == INSTALLED_BIN
        kinds = CONSUMER_KINDS if "%i" in args else ("",)
        for kind in kinds:
            lines[f"{unit} {kind}".strip()] = [kind if arg == "%i" else arg for arg in args]
    return lines


def _parse(args: list[str]) -> None:
    """Parse ``strandline ARGS`` as the CLI would (types, choices, options) without running it."""
    command: click.Command = cli
    ctx = click.Context(cli, info_name="strandline")
    while isinstance(command, click.Group):  # the groups take no options of their own
        assert args, "a command group needs a subcommand"
        sub = command.get_command(ctx, args[0])
        assert sub is not None, f"no such command: {args[0]}"
        command, args = sub, args[1:]
        ctx = click.Context(command, info_name=command.name, parent=ctx)
    command.make_context(ctx.info_name, list(args), parent=ctx.parent)


COMMAND_LINES = _strandline_command_lines()


def test_compose_runs_every_kind_of_strandline_process() -> None:
    assert {"compose strandline", *(f"compose {kind}" for kind in CONSUMER_KINDS)} <= COMMAND_LINES.keys()
    for kind in CONSUMER_KINDS:
        assert COMMAND_LINES[f"compose {kind}"][:2] == ["consume", kind]


@pytest.mark.parametrize("where", sorted(COMMAND_LINES))
def test_deployed_command_lines_are_valid_cli_invocations(where: str) -> None:
    args = COMMAND_LINES[where]
    _parse(args)
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output


def test_cli_parse_check_rejects_a_bad_command_line() -> None:
    # Guards the test above: `--help` alone would accept an unknown consumer kind.
    with pytest.raises(click.BadParameter):
        _parse(["consume", "dirft", "--metrics-port", "9464"])
    with pytest.raises(click.NoSuchOption):
        _parse(["consume", "drift", "--metric-port", "9464"])
