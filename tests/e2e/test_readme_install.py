"""The README's installer and operator sections, followed as written, from nothing: a CA, a gateway, the broker,
an ingester, then data from the gateway in InfluxDB (issue 22, "done when").

Every command below is checked to appear in the README (whitespace folded, placeholders as the README writes them)
before it runs, so the README and this test cannot drift apart. What the test changes, and why:
- paths: ``ca/``, ``srv/``, ``bundle/`` live in a temporary CA host directory; ``/var/lib/kyojo*`` and
  ``/etc/kyojo/`` map to temporary directories (no root, no systemd here);
- "install on the broker host" (docs/BROKER.md's ``install`` commands) is done by pointing the rendered
  ``kyojo.conf`` at the bundle and at a free loopback port, started by the test as a real Mosquitto;
- the gateway has no radio here: its ``[[devices]]`` is the simulated household (``kind = "sim"``) instead of the
  README's BLE strap, plugs and meter, and ``[clock] speed = 60`` so a minute's window closes within seconds;
- ``broker.city.example`` is ``localhost`` (the broker's certificate names it: ``--dns`` in the README).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from provisioning.local import InfluxDB, Mosquitto
from provisioning.services.mosquitto import CustomMosquitto
from tests.kit import ROOT, free_port, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.influx, pytest.mark.slow]

README = (ROOT / "README.md").read_text(encoding="utf-8")
KYOJO = str(Path(sys.executable).with_name("kyojo"))


def folded(text: str) -> str:
    return re.sub(r"\s+", " ", text)


class Host:
    """Runs README commands with the README's paths mapped into ``base``."""

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base, self.env = base, env
        self.ca_host = base / "ca-host"
        self.ca_host.mkdir(parents=True)
        self.paths = {
            "/var/lib/kyojo-": f"{base}/var-lib-kyojo-",
            "/var/lib/kyojo": f"{base}/var-lib-kyojo",
            "/etc/kyojo/": f"{base}/etc-kyojo/",
            "broker.city.example": "localhost",  # the name the broker's certificate gets and clients connect to
        }
        (base / "etc-kyojo").mkdir()

    def path(self, text: str) -> str:
        for readme_path, here in self.paths.items():
            text = text.replace(readme_path, here)
        return text

    def run(self, command: str, *, cwd: Path | None = None, **placeholders: str) -> str:
        """``command`` as the README writes it (checked), placeholders filled, paths mapped; its stdout."""
        assert folded(command) in folded(README), f"the README no longer says: {command}"
        for name, value in placeholders.items():
            command = command.replace(f"<{name}>", value)
        argv = [KYOJO if a == "kyojo" else self.path(a) for a in shlex.split(command)]
        done = subprocess.run(
            argv, cwd=cwd or self.ca_host, env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done.stdout


def readme_toml(after: str) -> str:
    """The first ```toml block after the line containing ``after``."""
    start = README.index(after)
    block = re.search(r"```toml\n(.*?)```", README[start:], re.S)
    assert block is not None, after
    return block.group(1)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path, {k: v for k, v in os.environ.items() if not k.startswith("KYOJO_")})


def test_the_readme_deploys_a_gateway_the_broker_and_an_ingester_from_scratch(
    host: Host, influxdb: InfluxDB, influx_db: str, tmp_path: Path
) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    logs = {"ingester": tmp_path / "ingester.log", "agent": tmp_path / "agent.log"}
    outs = {name: path.open("wb") for name, path in logs.items()}
    broker: Mosquitto | None = None
    try:
        # -- Installers, steps 1-4: the CA and the gateway's identity ---------------------------------------------
        host.run("kyojo provision ca init --ca-dir ca/")
        code = host.run("kyojo provision enroll home-001 --ca-dir ca/").strip()
        host.run("kyojo provision gateway home-001 --code <code> --state-dir /var/lib/kyojo", code=code)
        shutil.copy(host.path("/var/lib/kyojo/tls/identity.csr"), host.ca_host / "identity.csr")  # Pi -> CA host
        host.run("kyojo provision sign identity.csr --ca-dir ca/ --expect home-001")
        host.run("kyojo provision install home-001.crt --ca ca/ca.crt --state-dir /var/lib/kyojo")

        # -- Operators: the cloud's identities, the broker, the keys --------------------------------------------
        codes = {}
        for name, role in (("ingest-1", "ingest"), ("ingest-1-consents", "ingest")):
            codes[name] = host.run(f"kyojo provision enroll {name} --role {role} --ca-dir ca/").strip()
        host.run("kyojo provision enroll eraser-1 --role eraser --ca-dir ca/")
        host.run("kyojo provision enroll broker-admin --role admin --ca-dir ca/")
        for name in codes:
            placeholders = {"name": name, "role": "ingest", "code": codes[name]}
            host.run(
                "kyojo provision service <name> --role <role> --code <code> --state-dir /var/lib/kyojo-<name>",
                **placeholders,
            )
            shutil.copy(host.path(f"/var/lib/kyojo-{name}/tls/identity.csr"), host.ca_host / "identity.csr")
            host.run("kyojo provision sign identity.csr --ca-dir ca/ --expect <name>", **placeholders)
            host.run(
                "kyojo provision install <name>.crt --ca ca/ca.crt --state-dir /var/lib/kyojo-<name>", **placeholders
            )
        host.run("kyojo provision server broker --ca-dir ca/ --out-dir srv/ --dns broker.city.example")
        out = host.run("kyojo provision broker-config --ca-dir ca/ --out-dir bundle/ --server-dir srv/")
        group = re.search(r"group = '([^']+)'", out)
        assert group is not None, out
        host.run("kyojo provision gateway-keys --ca-dir ca/ --out /etc/kyojo/gateway_keys.json")
        scope_key = host.run("kyojo ingest new-key").strip()

        # "install on the broker host": the rendered fragment, its files where it names them, a port of ours
        bundle = host.ca_host / "bundle"
        port = free_port()
        conf = (bundle / "kyojo.conf").read_text().replace("/etc/mosquitto/kyojo", str(bundle))
        conf = re.sub(r"^listener 8883.*$", f"listener {port} 127.0.0.1", conf, flags=re.M)
        assert f"listener {port} 127.0.0.1" in conf, conf
        broker = CustomMosquitto(tmp_path / "mosquitto", port, conf, persistence=False)
        broker.start()

        # /etc/kyojo/ingest.toml as the README writes it, its placeholders filled
        doc = host.path(readme_toml("`/etc/kyojo/ingest.toml`"))
        doc = doc.replace("<the secret group broker-config printed>", group.group(1))
        doc = doc.replace("<kyojo ingest new-key>", scope_key)
        doc = doc.replace("broker_port = 8883", f"broker_port = {port}")
        doc = doc.replace("http://influx.internal:8086", influxdb.url).replace(
            'influx_db = "kyojo"', f'influx_db = "{influx_db}"'
        )
        ingest_toml = Path(host.path("/etc/kyojo/ingest.toml"))
        ingest_toml.write_text(doc, encoding="utf-8")
        tomllib.loads(doc)  # still TOML after the substitutions
        env = {**host.env, "KYOJO_INFLUX_URL": influxdb.url, "KYOJO_INFLUX_DB": influx_db}
        done = subprocess.run([KYOJO, "ingest", "init-db"], env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        ingester = subprocess.Popen(
            [KYOJO, *shlex.split(host.path("ingest run --config /etc/kyojo/ingest.toml"))],
            env=host.env,
            stdout=outs["ingester"],
            stderr=subprocess.STDOUT,
        )
        procs.append(ingester)
        assert "kyojo ingest run --config /etc/kyojo/ingest.toml" in README

        # -- Installers, step 6: /etc/kyojo/agent.toml (gateway and mqtt as written; devices simulated) --------
        agent = host.path(readme_toml("6. Write `/etc/kyojo/agent.toml`"))
        head = agent.split("[[devices]]")[0]
        head = head.replace("port = 8883", f"port = {port}")
        head += '\n[clock]\nspeed = 60\n\n[[devices]]\nkind = "sim"\nprofile = "household"\nid = "home-001"\n'
        agent_toml = Path(host.path("/etc/kyojo/agent.toml"))
        agent_toml.write_text(head, encoding="utf-8")
        tomllib.loads(head)
        genv = {**host.env, "KYOJO_CONFIG": str(agent_toml)}
        done = subprocess.run(
            [KYOJO, "consent", "grant", "community-energy", "--person", "home-001"],
            env=genv,
            capture_output=True,
            text=True,
            input="y\n",
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        procs.append(
            subprocess.Popen([KYOJO, "agent", "run"], env=genv, stdout=outs["agent"], stderr=subprocess.STDOUT)
        )

        # -- the gateway's energy windows arrive in InfluxDB, tagged with its household --------------------------
        def energy_points() -> int:
            return influxdb.count("energy", influx_db, field="delta")

        try:
            wait_for(lambda: energy_points() > 0, 90, "the gateway's energy windows in InfluxDB")
        except AssertionError as err:
            tails = {k: v.read_text(errors="replace")[-3000:] for k, v in logs.items() if v.exists()}
            raise AssertionError(f"{err}\n" + "\n".join(f"--- {k}:\n{t}" for k, t in tails.items())) from err
        rows = influxdb.query_rows('SELECT * FROM "energy" LIMIT 1', db=influx_db)
        assert rows[0]["purpose"] == "community-energy" and rows[0]["household"]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if broker is not None:
            broker.stop()
        for f in outs.values():
            f.close()
