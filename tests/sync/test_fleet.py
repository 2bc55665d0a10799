"""Model rollout and rollback, kiosk status, enrollment upstream, and the `shelfsight hq` commands."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from shelfsight.catalog.hq.inbox import EnrollmentInbox
from shelfsight.catalog.store import Catalog
from shelfsight.catalog.sync.codec import encode_delta
from shelfsight.catalog.sync.envelope import EnvelopeHeader, Signer, Verifier
from shelfsight.catalog.sync.messages import EnrolledFrame, Enrollment
from shelfsight.edge_app.cli import build_cli
from shelfsight.edge_app.kiosk.updates.releases import (
    current_fingerprint,
    current_release,
    rollback,
)
from tests.support.broker import Broker
from tests.support.sync import DIM, WAIT, Hq, RunningServer, Tap, make_model


def reembed(hq: Hq, model: Path) -> str:
    """Switch the master to another model, as `catalog reembed` would (random vectors stand in for it)."""
    fingerprint = hashlib.sha256(model.read_bytes()).hexdigest()
    rng = np.random.default_rng(5)
    ids = [r[0] for r in hq.catalog.db.execute("SELECT id FROM reference_images").fetchall()]
    hq.catalog.replace_embeddings(fingerprint, {i: rng.normal(size=DIM).astype(np.float32) for i in ids})
    return fingerprint


def test_model_rollout_switches_model_and_catalog_together_and_rolls_back(hq: Hq, kiosk_factory) -> None:
    hq.add(range(4))
    hq.publisher.publish()
    switched: list[tuple[Path, Path]] = []
    kiosk = kiosk_factory("k1", hq=hq, hooks={"on_release": lambda m, c: switched.append((m, c))})
    old = kiosk.model_fingerprint
    new_model = make_model(hq.root / "model-b", seed=1)
    new = reembed(hq, new_model)
    hq.publisher.model = new_model
    hq.publisher.publish()
    assert kiosk.wait_for(lambda k: k.model_fingerprint == new and k.version == hq.catalog.version, WAIT), (
        kiosk.last_error
    )
    model_path, catalog_path = current_release(kiosk.data_dir)
    assert switched == [(model_path, catalog_path)]
    assert model_path.read_bytes() == new_model.read_bytes()
    with Catalog(catalog_path, create=False) as catalog:
        assert catalog.model_fingerprint == new
        assert catalog.export_snapshot()["records"] == hq.catalog.export_snapshot()["records"]
    kiosk.stop()
    rollback(kiosk.data_dir)
    assert current_fingerprint(kiosk.data_dir) == old


def test_delta_with_another_models_embeddings_is_refused(
    hq: Hq, broker: Broker, kiosk_factory, hq_keys: tuple[Signer, Verifier, Path], tmp_path: Path
) -> None:
    hq.add(range(2))
    hq.publisher.publish()
    kiosk = kiosk_factory("k1", hq=hq)
    assert kiosk.wait_for(lambda k: k.target_version == hq.catalog.version, WAIT)
    base = hq.catalog.version
    with Catalog(tmp_path / "other.db") as other:
        other.replace_with_snapshot(hq.catalog.export_snapshot())
        other.add_product("x1", "Other")
        changes = other.changes_since(base)
    changes.append(
        {
            "version": base + 2,
            "op": "upsert_reference",
            "product_id": "x1",
            "reference_id": "x1/abc",
            "data": {
                "embedding": "AAAAAAAAAAAAAAAAAAAAAA==",
                "scale": 0.01,
                "dim": DIM,
                "fingerprint": "f" * 64,
                "phash": "",
                "source": "",
                "keypoints": None,
                "image_jpeg": None,
            },
        }
    )
    envelope = hq_keys[0].seal(
        EnvelopeHeader(kind="delta", fleet=hq.topics.fleet, seq=1, base=base, target=base + 2), encode_delta(changes)
    )
    tap = Tap(broker, client_id="other-model")
    tap.inject(hq.topics.delta, envelope)
    tap.close()
    assert kiosk.wait_for(lambda k: "model" in (k.last_error or ""), WAIT)
    assert kiosk.version == base


def test_enrollment_goes_to_hq_and_comes_back_approved(
    hq: Hq, broker: Broker, kiosk_factory, hq_keys: tuple[Signer, Verifier, Path], tmp_path: Path
) -> None:
    hq.add(range(2))
    hq.publisher.publish()
    inbox = EnrollmentInbox(tmp_path / "inbox.db")
    server = RunningServer(hq, hq_keys[0], inbox, poll_s=0.2)
    kiosk = kiosk_factory("k1", hq=hq)
    try:
        rng = np.random.default_rng(3)
        frames = [EnrolledFrame(embedding=rng.normal(size=DIM).tolist(), fingerprint=hq.fingerprint) for _ in range(3)]
        kiosk.send_enrollment(Enrollment(kiosk_id="k1", product_id="new-sku", name="Local Jam", frames=frames))
        deadline_ok = kiosk.wait_for(lambda k: bool(inbox.entries()), WAIT)
        assert deadline_ok
        [entry] = inbox.entries()
        assert (entry.kiosk_id, entry.product_id, entry.frames) == ("k1", "new-sku", 3)
        result = CliRunner().invoke(
            build_cli(), ["hq", "approve", str(entry.id), "--inbox", str(inbox.path), "--db", str(hq.master)]
        )
        assert result.exit_code == 0, result.output
        hq.catalog.reload()
        assert kiosk.wait_for(lambda k: k.version == hq.catalog.version, WAIT), kiosk.last_error
        _, path = current_release(kiosk.data_dir)
        with Catalog(path, create=False) as catalog:
            assert catalog.product("new-sku")["name"] == "Local Jam"
            assert len(catalog.product("new-sku")["references"]) == 3
    finally:
        server.stop()
        inbox.close()


def test_hq_commands_end_to_end(hq: Hq, broker: Broker, kiosk_factory, tmp_path: Path) -> None:
    runner = CliRunner()
    cli = build_cli()
    keys = tmp_path / "cli-keys"
    result = runner.invoke(cli, ["hq", "keygen", "--out", str(keys)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(keys / "hq_signing.key").st_mode) == 0o600
    again = runner.invoke(cli, ["hq", "keygen", "--out", str(keys)])
    assert again.exit_code == 1 and "refusing to overwrite" in again.output

    hq.add(range(3))
    common = ["--host", "127.0.0.1", "--port", str(broker.port), "--fleet", hq.topics.fleet]
    result = runner.invoke(
        cli, ["hq", "publish", "--db", str(hq.master), "--key", str(keys / "hq_signing.key"), *common]
    )
    assert result.exit_code == 0, result.output
    assert f"published v{hq.catalog.version}" in result.output

    kiosk = kiosk_factory("k1", hq=hq, public_key=keys / "hq_signing.pub")
    assert kiosk.wait_for(lambda k: k.target_version == hq.catalog.version, WAIT)
    kiosk_factory("k2", hq=hq, public_key=keys / "hq_signing.pub").stop()  # leaves an "offline" status
    k2_version = hq.catalog.version
    hq.add(range(3, 5))
    result = runner.invoke(
        cli, ["hq", "publish", "--db", str(hq.master), "--key", str(keys / "hq_signing.key"), *common]
    )
    assert result.exit_code == 0, result.output
    assert kiosk.wait_for(lambda k: k.version == hq.catalog.version, WAIT)

    result = runner.invoke(cli, ["hq", "status", "--wait", "1", "--db", str(hq.master), *common])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines() if line.startswith("k")}
    assert lines["k1"][1:4] == ["online", str(hq.catalog.version), "0"]
    assert lines["k2"][1] == "offline" and lines["k2"][3] == str(hq.catalog.version - k2_version)
    result = runner.invoke(cli, ["hq", "status", "--wait", "1", "--json", *common])
    assert {s["kiosk_id"] for s in json.loads(result.output)} == {"k1", "k2"}

    bad = runner.invoke(cli, ["hq", "publish", "--db", str(hq.master), "--key", str(keys / "hq_signing.pub"), *common])
    assert bad.exit_code == 1 and "private key" in bad.output
    result = runner.invoke(cli, ["hq", "enrollments", "--inbox", str(tmp_path / "empty.db")])
    assert result.exit_code == 0 and "product" in result.output


def test_fresh_kiosk_bootstraps_from_the_release(hq: Hq, kiosk_factory) -> None:
    hq.add(range(5))
    hq.publisher.publish()
    kiosk = kiosk_factory("fresh")  # no seed: no model, no catalog
    assert kiosk.wait_for(lambda k: k.model_fingerprint == hq.fingerprint and k.version == hq.catalog.version, WAIT)
    model_path, catalog_path = current_release(kiosk.data_dir)
    assert model_path.read_bytes() == hq.model.read_bytes()
    with Catalog(catalog_path, create=False) as catalog:
        assert catalog.export_snapshot()["records"] == hq.catalog.export_snapshot()["records"]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, systemd
def test_hq_serve_command_publishes_new_versions(
    hq: Hq, broker: Broker, kiosk_factory, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    keys = tmp_path / "serve-keys"
    CliRunner().invoke(build_cli(), ["hq", "keygen", "--out", str(keys)])
    hq.add(range(3))
    command = [
        sys.executable,
        "-c",
        "from shelfsight.edge_app.cli import main; main()",
        "hq",
        "serve",
        "--db",
        str(hq.master),
        "--key",
        str(keys / "hq_signing.key"),
        "--model",
        str(hq.model),
        "--inbox",
        str(tmp_path / "inbox.db"),
        "--poll",
        "0.2",
        "--host",
        "127.0.0.1",
        "--port",
        str(broker.port),
        "--fleet",
        hq.topics.fleet,
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        kiosk = kiosk_factory("k1", public_key=keys / "hq_signing.pub")  # bootstraps from the served release
        assert kiosk.wait_for(lambda k: k.version == hq.catalog.version, WAIT), kiosk.last_error
        hq.add(range(3, 6))  # the server notices the new master version by itself
        assert kiosk.wait_for(lambda k: k.version == hq.catalog.version, WAIT), kiosk.last_error
    finally:
        server.send_signal(stop_signal)  # handled between steps: never a KeyboardInterrupt inside paho
        output = server.communicate(timeout=30)[0].decode()
    assert server.returncode == 0, output
    assert "serving shelfsight/test" in output
