"""A real audit record repository for the tests: Debian's rsyslogd receiving RFC 5425 syslog over TLS."""
from __future__ import annotations

import re
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import _wait_port, free_port

RSYSLOGD = Path("/usr/sbin/rsyslogd")

CONFIG = """
global(workDirectory="{dir}" maxMessageSize="64k"
       DefaultNetstreamDriverCAFile="{ca}" DefaultNetstreamDriverCertFile="{cert}"
       DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="audit" type="string" string="%msgid% %structured-data% %msg%\\n")
*.* action(type="omfile" file="{dir}/received.log" template="audit")
"""


class Rsyslog:
    """rsyslogd in the foreground on a free loopback port, requiring client certificates from ``ca``."""

    def __init__(self, directory: Path, ca: Path, cert: Path, key: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = directory / "rsyslog.conf"
        self.conf.write_text(CONFIG.format(dir=directory, ca=ca, cert=cert, key=key, port=self.port))
        self.process: subprocess.Popen | None = None

    def start(self) -> "Rsyslog":
        log = open(self.directory / "rsyslogd.log", "ab")
        self.process = subprocess.Popen([str(RSYSLOGD), "-n", "-f", str(self.conf), "-i", str(self.directory / "pid")],
                                        stdout=log, stderr=subprocess.STDOUT)
        if not _wait_port(self.port, time.time() + 30):
            raise RuntimeError((self.directory / "rsyslogd.log").read_text())
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)

    def messages(self) -> list[tuple[str, str, ET.Element]]:
        """(MSGID, log position from the structured data, parsed XML audit message) per line received."""
        path = self.directory / "received.log"
        out = []
        for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
            msgid, position, xml = re.fullmatch(r'(\S+) \[\S+ position="([^"]+)"\] (.*)', line).groups()
            out.append((msgid, position, ET.fromstring(xml.lstrip("\ufeff").encode("utf-8"))))
        return out
