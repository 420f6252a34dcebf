"""[queue] backend and the [queue.nats] table: defaults, the file, the environment, the
checks (one line naming the key, never a secret) and what is shown of a secret.

Every call passes `environ` explicitly so that the developer's own environment cannot leak in.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from supervisor.cli.main import cli
from supervisor.conf.config import ConfigError, load_config, setting_var
from supervisor.conf.example import render_example
from supervisor.conf.settings import TABLES, NatsSettings, QueueSettings, redacted_url
from tests.unit.conftest import write

SECRET = "s3cret-Value"  # a password or token that no message or output may show



def nats_table(tmp_path: Path, body: str) -> str:
    return write(tmp_path, "[queue.nats]\n" + textwrap.dedent(body))


def config_error(**kwargs: Any) -> str:
    """Load, expect a ConfigError, and return its message (which must be one line)."""
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def files(tmp_path: Path, *names: str) -> dict[str, str]:
    """Empty files next to the configuration file, name -> absolute path."""
    out = {}
    for name in names:
        (tmp_path / name).write_text("")
        out[name] = str(tmp_path / name)
    return out


# -- defaults and values -------------------------------------------------------------------

def test_defaults(env: dict[str, str]) -> None:
    config = load_config(environ=env)
    assert config.queue.backend == "sqlite"
    assert config.queue.nats == NatsSettings()
    assert NatsSettings() == NatsSettings(
        servers=("nats://127.0.0.1:4222",), stream="DOCBRAIN", replicas=1, ack_wait=30.0,
        connect_timeout=2.0, creds="", nkey="", user="", password="", token="", tls_ca="",
        tls_cert="", tls_key="")
    assert QueueSettings().nats == NatsSettings()


def test_a_full_table(env: dict[str, str], tmp_path: Path) -> None:
    paths = files(tmp_path, "ca.pem", "cert.pem", "key.pem", "host.creds")
    path = write(tmp_path, """\
        [queue]
        backend = "nats"
        max_attempts = 4
        [queue.nats]
        servers = ["nats://10.0.0.5:4222", "tls://nats-2.example.com", "ws://[::1]:8080",
                   "wss://h.example.com:443"]
        stream = "DOCBRAIN_prod-2"
        replicas = 3
        ack_wait = 45
        connect_timeout = 0.5
        creds = "host.creds"
        tls_ca = "ca.pem"
        tls_cert = "cert.pem"
        tls_key = "key.pem"
        """)
    config = load_config(path, environ=env)
    assert config.queue.backend == "nats"
    assert config.queue.max_attempts == 4  # the section's own keys beside its table
    assert config.queue.nats == NatsSettings(
        servers=("nats://10.0.0.5:4222", "tls://nats-2.example.com", "ws://[::1]:8080",
                 "wss://h.example.com:443"),
        stream="DOCBRAIN_prod-2", replicas=3, ack_wait=45.0, connect_timeout=0.5,
        creds=paths["host.creds"], tls_ca=paths["ca.pem"], tls_cert=paths["cert.pem"],
        tls_key=paths["key.pem"])
    assert isinstance(config.queue.nats.ack_wait, float)  # an int is accepted for a float


@pytest.mark.parametrize("body", [
    f'user = "docbrain"\npassword = "{SECRET}"\n',
    f'token = "{SECRET}"\n',
    'nkey = "seed.nk"\n',
    'creds = "host.creds"\n',
    'tls_ca = "ca.pem"\n',  # a CA alone: the servers are checked, the client is not
])
def test_each_kind_of_credentials_alone(env: dict[str, str], tmp_path: Path, body: str) -> None:
    files(tmp_path, "seed.nk", "host.creds", "ca.pem")
    nats = load_config(nats_table(tmp_path, body), environ=env).queue.nats
    assert nats.stream == "DOCBRAIN"


def test_files_are_relative_to_the_config_file(env: dict[str, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf" / "keys").mkdir(parents=True)
    (tmp_path / "conf" / "keys" / "host.creds").write_text("")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "seed.nk").write_text("")
    path = tmp_path / "conf" / "docbrain.toml"
    path.write_text('[queue.nats]\ncreds = "keys/host.creds"\n')
    monkeypatch.chdir(tmp_path)  # not the file's directory
    assert load_config(str(path), environ=env).queue.nats.creds == str(
        tmp_path / "conf" / "keys" / "host.creds")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path.write_text('[queue.nats]\nnkey = "~/seed.nk"\n')
    assert load_config(str(path), environ=env).queue.nats.nkey == str(
        tmp_path / "home" / "seed.nk")


# -- the environment -----------------------------------------------------------------------

def test_env_overrides_of_the_table(env: dict[str, str], tmp_path: Path) -> None:
    path = nats_table(tmp_path, 'servers = ["nats://from.file"]\nstream = "FILE"\n')
    config = load_config(path, environ={
        **env,
        "DOCBRAIN_QUEUE_BACKEND": "nats",
        "DOCBRAIN_QUEUE_NATS_SERVERS": "nats://a:4222, tls://b",
        "DOCBRAIN_QUEUE_NATS_REPLICAS": "3",
        "DOCBRAIN_QUEUE_NATS_ACK_WAIT": "12.5",
        "DOCBRAIN_QUEUE_NATS_USER": "docbrain",
        "DOCBRAIN_QUEUE_NATS_PASSWORD": SECRET,
    })
    assert config.queue.backend == "nats"
    nats = config.queue.nats
    assert nats.servers == ("nats://a:4222", "tls://b")
    assert nats.stream == "FILE"  # untouched by the environment
    assert (nats.replicas, nats.ack_wait) == (3, 12.5)
    assert (nats.user, nats.password) == ("docbrain", SECRET)


def test_env_servers_as_a_toml_list(env: dict[str, str]) -> None:
    config = load_config(environ={**env, "DOCBRAIN_QUEUE_NATS_SERVERS": '["nats://a", "ws://b"]'})
    assert config.queue.nats.servers == ("nats://a", "ws://b")


def test_the_variables_of_a_table_in_a_section() -> None:
    assert setting_var("queue.nats", "servers") == "DOCBRAIN_QUEUE_NATS_SERVERS"
    assert list(TABLES) == ["supervisor", "workers", "restart", "queue", "queue.nats",
                            "metrics"]


@pytest.mark.parametrize(("var", "value", "expected"), [
    ("DOCBRAIN_QUEUE_NATS_REPLICAS", "three",
     "DOCBRAIN_QUEUE_NATS_REPLICAS: expected an integer, got 'three'"),
    ("DOCBRAIN_QUEUE_NATS_REPLICAS", "9", "queue.nats.replicas: must be at most 5, got 9"),
    ("DOCBRAIN_QUEUE_NATS_SERVERS", "",
     "queue.nats.servers: must list at least one server URL"),
    ("DOCBRAIN_QUEUE_NATS_MAX_FLIGHT", "1", "DOCBRAIN_QUEUE_NATS_MAX_FLIGHT: no such setting"),
    ("DOCBRAIN_QUEUE_NATS_SERVER", "nats://a",
     "DOCBRAIN_QUEUE_NATS_SERVER: no such setting; did you mean DOCBRAIN_QUEUE_NATS_SERVERS?"),
    ("DOCBRAIN_QUEUE_NATS", "nats://a",
     "DOCBRAIN_QUEUE_NATS: [queue.nats] is a table; its keys are set by "
     "DOCBRAIN_QUEUE_NATS_<KEY>"),
    ("DOCBRAIN_QUEUE_BACKEND", "redis",
     "queue.backend: must be one of sqlite, nats, got 'redis'"),
])
def test_env_errors(env: dict[str, str], var: str, value: str, expected: str) -> None:
    assert config_error(environ={**env, var: value}) == expected


# -- errors --------------------------------------------------------------------------------

ERRORS: list[tuple[str, str, str]] = [
    ("backend", '[queue]\nbackend = "redis"\n',
     "queue.backend: must be one of sqlite, nats, got 'redis'"),
    ("unknown-key", "[queue.nats]\nbogus = 1\n", "queue.nats.bogus: unknown key"),
    ("deeper-table", "[queue.nats.more]\nx = 1\n", "queue.nats.more: unknown key"),
    ("table-not-table", "[queue]\nnats = 3\n", "queue.nats: expected a table, got an integer"),
    ("replicas-zero", "[queue.nats]\nreplicas = 0\n",
     "queue.nats.replicas: must be at least 1, got 0"),
    ("replicas-six", "[queue.nats]\nreplicas = 6\n",
     "queue.nats.replicas: must be at most 5, got 6"),
    ("replicas-string", '[queue.nats]\nreplicas = "3"\n',
     "queue.nats.replicas: expected an integer, got a string"),
    ("ack-wait-short", "[queue.nats]\nack_wait = 0.5\n",
     "queue.nats.ack_wait: must be at least 1, got 0.5"),
    ("connect-timeout-zero", "[queue.nats]\nconnect_timeout = 0\n",
     "queue.nats.connect_timeout: must be greater than 0, got 0.0"),
    ("servers-empty", "[queue.nats]\nservers = []\n",
     "queue.nats.servers: must list at least one server URL"),
    ("servers-string", '[queue.nats]\nservers = "nats://a"\n',
     "queue.nats.servers: expected a list of strings, got a string"),
    ("servers-ints", "[queue.nats]\nservers = [4222]\n",
     "queue.nats.servers: expected a list of strings, got a list"),
    ("servers-http", '[queue.nats]\nservers = ["nats://a", "http://b:4222"]\n',
     "queue.nats.servers: 'http://b:4222' must start with nats://, tls://, ws://, wss://"),
    ("servers-no-scheme", '[queue.nats]\nservers = ["10.0.0.5:4222"]\n',
     "queue.nats.servers: '10.0.0.5:4222' must start with nats://"),
    ("servers-no-host", '[queue.nats]\nservers = ["nats://:4222"]\n',
     "queue.nats.servers: 'nats://:4222' names no host"),
    ("servers-bad-port", '[queue.nats]\nservers = ["nats://a:99999"]\n',
     "queue.nats.servers: 'nats://a:99999' is not a valid URL"),
    ("servers-port-word", '[queue.nats]\nservers = ["nats://a:port"]\n',
     "queue.nats.servers: 'nats://a:port' is not a valid URL"),
    ("servers-port-zero", '[queue.nats]\nservers = ["nats://a:0"]\n',
     "queue.nats.servers: 'nats://a:0' has port 0"),
    ("stream-dot", '[queue.nats]\nstream = "DOC.BRAIN"\n',
     "queue.nats.stream: must be letters, digits, _ and - only (no dots, spaces, * or >), "
     "got 'DOC.BRAIN'"),
    ("stream-space", '[queue.nats]\nstream = "DOC BRAIN"\n', "queue.nats.stream: must be"),
    ("stream-star", '[queue.nats]\nstream = "DOC*"\n', "queue.nats.stream: must be"),
    ("stream-gt", '[queue.nats]\nstream = "DOC>"\n', "queue.nats.stream: must be"),
    ("stream-empty", '[queue.nats]\nstream = ""\n', "queue.nats.stream: must be"),
    ("creds-and-token", f'[queue.nats]\ncreds = "host.creds"\ntoken = "{SECRET}"\n',
     "queue.nats.token: cannot be set with creds: set at most one kind of credentials "
     "(creds, nkey, user and password, or token)"),
    ("nkey-and-user", '[queue.nats]\nnkey = "seed.nk"\nuser = "u"\npassword = "p"\n',
     "queue.nats.user: cannot be set with nkey"),
    ("password-and-token", f'[queue.nats]\npassword = "{SECRET}"\ntoken = "{SECRET}"\n',
     "queue.nats.token: cannot be set with password"),
    ("user-alone", '[queue.nats]\nuser = "docbrain"\n',
     "queue.nats.password: must be set together with user"),
    ("password-alone", f'[queue.nats]\npassword = "{SECRET}"\n',
     "queue.nats.user: must be set together with password"),
    ("cert-alone", '[queue.nats]\ntls_cert = "cert.pem"\n',
     "queue.nats.tls_key: must be set together with tls_cert"),
    ("key-alone", '[queue.nats]\ntls_key = "key.pem"\n',
     "queue.nats.tls_cert: must be set together with tls_key"),
    ("password-int", "[queue.nats]\nuser = \"u\"\npassword = 123456\n",
     "queue.nats.password: expected a string, got an integer"),
]
FILE_KEYS = ("creds", "nkey", "tls_ca", "tls_cert", "tls_key")


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in ERRORS],
                         ids=[i for i, _, _ in ERRORS])
def test_file_error(env: dict[str, str], tmp_path: Path, text: str, expected: str) -> None:
    files(tmp_path, "host.creds", "seed.nk", "cert.pem", "key.pem")
    message = config_error(path=write(tmp_path, text), environ=env)
    assert message.startswith(expected)
    assert SECRET not in message


@pytest.mark.parametrize("key", FILE_KEYS)
def test_a_file_that_is_not_there(env: dict[str, str], tmp_path: Path, key: str) -> None:
    (tmp_path / "a-directory").mkdir()
    partner = {"tls_cert": "tls_key", "tls_key": "tls_cert"}.get(key)
    pair = f'{partner} = "{files(tmp_path, "pair.pem")["pair.pem"]}"\n' if partner else ""
    for name in ("absent.pem", "a-directory"):
        message = config_error(path=nats_table(tmp_path, f'{key} = "{name}"\n{pair}'),
                               environ=env)
        assert message == (f"queue.nats.{key}: {name!r} is not a file "
                           f"({os.path.join(tmp_path, name)})")


@pytest.mark.parametrize("url", [f"http://docbrain:{SECRET}@a:4222", f"nats://{SECRET}@a:x",
                                 f"nats://u:{SECRET}@:4222", f"u:{SECRET}@a:4222"])
def test_a_bad_server_url_is_named_without_its_userinfo(env: dict[str, str], tmp_path: Path,
                                                        url: str) -> None:
    message = config_error(path=nats_table(tmp_path, f'servers = ["{url}"]\n'), environ=env)
    assert message.startswith("queue.nats.servers: ")
    assert SECRET not in message and "***@" in message


# -- what is shown of secrets --------------------------------------------------------------

@pytest.mark.parametrize(("url", "shown"), [
    ("nats://user:pass@host:4222", "nats://***@host:4222"),
    ("nats://token@host", "nats://***@host"),
    ("tls://u:p/a@ss@[::1]:4222", "tls://***@[::1]:4222"),  # an unescaped / or @ is hidden
    ("wss://u:p@h.example.com/nats", "wss://***@h.example.com/nats"),
    ("u:p@host:4222", "***@host:4222"),
    ("nats://host:4222", "nats://host:4222"),
    ("nats://host", "nats://host"),
    ("", ""),
])
def test_redacted_url(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


def test_to_dict_masks_secrets(env: dict[str, str], tmp_path: Path) -> None:
    path = nats_table(tmp_path, f"""\
        servers = ["nats://docbrain:{SECRET}@a:4222", "nats://b:4222"]
        user = "docbrain"
        password = "{SECRET}"
        """)
    config = load_config(path, environ=env)
    assert config.queue.nats.password == SECRET  # the daemon gets it as it is
    nats = config.to_dict()["queue"]["nats"]
    assert nats == {"servers": ["nats://***@a:4222", "nats://b:4222"], "stream": "DOCBRAIN",
                    "replicas": 1, "ack_wait": 30.0, "connect_timeout": 2.0, "creds": "",
                    "nkey": "", "user": "docbrain", "password": "***", "token": "",
                    "tls_ca": "", "tls_cert": "", "tls_key": ""}
    token = load_config(environ={**env, "DOCBRAIN_QUEUE_NATS_TOKEN": SECRET})
    assert token.to_dict()["queue"]["nats"]["token"] == "***"
    assert token.to_dict()["queue"]["nats"]["password"] == ""
    for shown in (json.dumps(config.to_dict()), repr(config), repr(token), str(token.queue)):
        assert SECRET not in shown


def test_docbrainctl_config_shows_no_secret(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("DOCBRAIN_")]:
        monkeypatch.delenv(var)
    path = write(tmp_path, f"""\
        [supervisor]
        state_dir = "{tmp_path / 'state'}"
        [queue]
        backend = "nats"
        [queue.nats]
        servers = ["nats://{SECRET}@a:4222"]
        token = "{SECRET}"
        """)
    result = CliRunner().invoke(cli, ["--config", path, "config"], prog_name="docbrainctl")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    queue = json.loads(result.output)["queue"]
    assert queue["backend"] == "nats"
    assert (queue["nats"]["servers"], queue["nats"]["token"]) == (["nats://***@a:4222"], "***")


# -- the example file ----------------------------------------------------------------------

def test_the_example_has_the_table_with_its_defaults() -> None:
    text = render_example({})
    queue, _, rest = text.partition("\n[queue.nats]\n")
    assert '\nbackend = "sqlite"\n' in queue.split("\n[queue]\n")[1]
    table = rest.split("\n[")[0]
    assert 'servers = ["nats://127.0.0.1:4222"]' in table.splitlines()
    for key in ("stream", "replicas", "ack_wait", "connect_timeout", *FILE_KEYS, "user",
                "password", "token"):
        assert f"\n{key} = " in table
    assert "From 1 to 5." in table  # replicas' bounds
