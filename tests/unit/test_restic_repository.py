"""The sidecar's own restic children (sidecar/store/restic.py) get the repository's password
as a 0600 file, never in their environment (`/proc/PID/environ`) or arguments."""

from __future__ import annotations

import json
import os
import stat

from sidecar.store.restic import Repository

PASSWORD = "pw-in-a-file-Q3"
FROM_PASSWORD = "source-pw-Z8"


def _fake_restic(tmp_path):
    """A `restic` that records its environment as /proc shows it, its arguments, and what
    its password files hold (and their modes), then prints an empty snapshot list."""
    script = tmp_path / "restic"
    script.write_text(f"""#!/usr/bin/env python3
import json, os, stat, sys
seen = {{"environ": open(f"/proc/{{os.getpid()}}/environ", "rb").read().decode(errors="replace"),
         "argv": sys.argv, "files": {{}}}}
for var in ("RESTIC_PASSWORD_FILE", "RESTIC_FROM_PASSWORD_FILE"):
    if var in os.environ:
        path = os.environ[var]
        seen["files"][var] = [path, open(path).read(), stat.S_IMODE(os.stat(path).st_mode)]
with open({str(tmp_path / "seen.jsonl")!r}, "a") as out:
    out.write(json.dumps(seen) + "\\n")
print("[]")
""")
    script.chmod(0o755)
    return script


def _seen(tmp_path):
    return [json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines()]


def test_a_restic_child_reads_the_password_from_a_0600_file_that_is_gone_afterwards(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTIC_PASSWORD", "the-sidecars-own-setting")  # never passed on either
    secrets = tmp_path / "keys"
    repo = Repository(str(tmp_path / "repo"), PASSWORD, binary=str(_fake_restic(tmp_path)), secrets_dir=secrets)
    assert repo.snapshots() == []
    source = Repository(str(tmp_path / "other"), FROM_PASSWORD, binary=repo.binary, secrets_dir=secrets)
    repo.copy_from(source, tag="t")
    first, second = _seen(tmp_path)
    for seen in (first, second):
        assert PASSWORD not in seen["environ"] and FROM_PASSWORD not in seen["environ"]
        assert "the-sidecars-own-setting" not in seen["environ"]
        assert not any(PASSWORD in arg or FROM_PASSWORD in arg for arg in seen["argv"])
    path, content, mode = first["files"]["RESTIC_PASSWORD_FILE"]
    assert content == PASSWORD and mode == 0o600 and os.path.dirname(path) == str(secrets)
    assert second["files"]["RESTIC_FROM_PASSWORD_FILE"][1:] == [FROM_PASSWORD, 0o600]
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert not list(secrets.iterdir())  # every file removed once its child ended
