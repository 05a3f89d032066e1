"""Two worker processes share one study on a real PostgreSQL server (Optuna RDB storage).

The fixture starts a throw-away server from the Debian packages (`apt-get install -y postgresql`):
initdb into a temporary folder, trust authentication, a free local port. As root it runs the server
as the `postgres` OS user (initdb refuses root). Skipped, with the reason, if the binaries, the
`postgres` user (when root) or the psycopg2 driver (extra `postgres`) are missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_fixtures import recipe_dict

from quant_workbench.config.recipe import recipe_from_dict
from quant_workbench.pipeline.run import run_dir_for
from quant_workbench.search.study import normalize_storage


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    pytest.importorskip("psycopg2", reason="PostgreSQL driver missing: pip install 'quant-workbench[postgres]' (psycopg2-binary)")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): apt-get install -y postgresql")
    as_user: Callable[[], None] | None = None
    folder = Path(tempfile.mkdtemp(prefix="qwb-pg-"))
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip("running as root and there is no 'postgres' OS user to run the server as (the Debian package creates it)")
        os.chown(folder, pw.pw_uid, pw.pw_gid)

        def as_user() -> None:
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

    data = folder / "data"
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "qwb", "-A", "trust", "--no-sync", "-E", "UTF8"],
        check=True, capture_output=True, preexec_fn=as_user, env=env,
    )
    server = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(folder), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=as_user, env=env,
    )
    url = f"postgresql://qwb@127.0.0.1:{port}/postgres"
    try:
        import psycopg2

        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg2.connect(host="127.0.0.1", port=port, user="qwb", dbname="postgres").close()
                break
            except psycopg2.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    err = server.stderr.read().decode() if server.stderr else ""
                    pytest.fail(f"PostgreSQL did not start: {err}")
                time.sleep(0.2)
        yield url
    finally:
        # SIGINT is PostgreSQL's fast shutdown: SIGTERM (smart) would wait for the test's own pooled connection
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_study(tmp_path: Path, tiny_bert_dir: Path, tiny_csv: Path, postgres_url: str) -> None:
    import optuna

    n_trials = 6
    data = recipe_dict(tmp_path, tiny_bert_dir, tiny_csv)
    data["benchmark"] = {"batch_sizes": [1], "seq_lengths": [16], "warmup": 1, "iterations": 2, "threads": 1}
    data["search"] = {
        "methods": ["max", "percentile"], "percentiles": [99.0, 99.9, 99.99], "groups": ["layer", "kind"],
        "sensitivity": False, "fallback": False, "max_trials": n_trials, "sampler": "random",
        "study_name": "shared", "latency": {"batch_size": 1, "seq_length": 16, "warmup": 1, "iterations": 2},
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "quant_workbench.cli", str(path), "--no-progress", "--storage", postgres_url, "--run-id", f"w{i}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outs = [w.communicate(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err
    trials = optuna.load_study(study_name="shared", storage=normalize_storage(postgres_url)).get_trials(deepcopy=False)
    counted = [t for t in trials if t.state.name == "COMPLETE" or (t.state.name == "FAIL" and "error" in t.user_attrs)]
    assert len(counted) == n_trials  # the union of both workers' trials is exactly the budget
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in trials if t.state.name == "RUNNING"]
    by_worker = {t.user_attrs["worker"] for t in counted}
    assert len(by_worker) == 2  # both workers ran trials
    assert all(t.user_attrs["record"]["status"] == "ok" for t in counted)
    # each worker's report sees the whole study, and the run folder is the recipe's (storage not in the hash)
    recipe: Any = recipe_from_dict(data)
    assert run_dir_for(recipe, "w0").parent == run_dir_for(recipe).parent
    for i in range(2):
        assert (run_dir_for(recipe, f"w{i}") / "best" / "model.qdq.onnx").exists()
