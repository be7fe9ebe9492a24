"""The audit trail (``trail.py``), its local log, its messages (PS3.15 A.5) and syslog forwarding."""
from archive.audit.trail import EVENTS, AuditTrail, LocalUser

__all__ = ["EVENTS", "AuditTrail", "LocalUser"]
