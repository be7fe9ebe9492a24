"""THIRD-PARTY-NOTICES.md lists exactly what package-lock.json ships, with each licence."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_the_notice_is_current_with_the_lock_file():
    done = subprocess.run([sys.executable, "scripts/third_party_notices.py", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_shipped_package_is_listed_with_a_licence():
    sys.path.insert(0, str(REPO / "scripts"))
    from third_party_notices import shipped

    text = (REPO / "THIRD-PARTY-NOTICES.md").read_text()
    packages = shipped()
    assert any(name == "dicom-microscopy-viewer" for name, _ in packages)
    assert all(entry.get("license") and f"| {name} | {entry['version']} | {entry['license']} |" in text
               for name, entry in packages)
    assert "axe-core" not in text  # a test-only (dev) dependency is not shipped
